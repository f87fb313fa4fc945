package otel_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/tetherrpc/tether/client"
	tetherotel "github.com/tetherrpc/tether/contrib/otel"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/interceptors/logging"
)

// lockedBuffer collects log output from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Issue 10 item 18: credentials in the client's URL (userinfo, a token in
// the query) appear in no error, log record or span, also when the dialer's
// error or the server's refusal repeats them.
func TestURLCredentialsRedacted(t *testing.T) {
	const (
		token    = "tok-7f3a9c41d2e8b6a5"
		password = "pw-9b8c7d6e5f4a"
	)
	// A refused port on 127.0.0.1.
	ln, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := ln.Addr().String()
	ln.Close()
	// A server that refuses the upgrade and repeats the request URI.
	echoing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "bad credentials in "+r.RequestURI, http.StatusUnauthorized)
	}))
	defer echoing.Close()

	// Userinfo is refused at once, without repeating it.
	if _, err := client.New("ws://alice:" + password + "@" + refused + "/tether?access_token=" + token); err == nil {
		t.Error("a URL with userinfo was accepted (the dialer refuses it)")
	} else if strings.Contains(err.Error(), password) || strings.Contains(err.Error(), token) {
		t.Errorf("New's error repeats a credential: %v", err)
	}
	if _, err := client.New("ws://127.0.0.1:1/%zz?access_token=" + token); err == nil {
		t.Error("a malformed URL was accepted")
	} else if strings.Contains(err.Error(), token) {
		t.Errorf("New's error repeats a credential: %v", err)
	}

	for _, target := range []string{
		"ws://" + refused + "/tether?tenant=acme&access_token=" + token + "&password=" + password,
		"ws://" + strings.TrimPrefix(echoing.URL, "http://") + "/tether?access_token=" + token + "&api_key=" + password,
	} {
		t.Run(target[:strings.Index(target, "/tether")], func(t *testing.T) {
			var logs lockedBuffer
			logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			rec := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
			defer tp.Shutdown(context.Background())
			c, err := client.New(target,
				client.WithLogger(logger),
				client.WithBackoff(client.BackoffConfig{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond}),
				client.WithInterceptors(
					logging.NewClient(logger, logging.WithMetadataKeys()),
					tetherotel.NewClient(tetherotel.WithTracerProvider(tp)),
				))
			if err != nil {
				t.Fatal(err)
			}
			var errs []string
			errs = append(errs, c.URL())
			ec := echov1.NewEchoServiceClient(c)
			// A call that times out waiting for a connection names the
			// last dial's error, once a dial has failed: on a loaded
			// machine the first may not have within one call's 500 ms,
			// so the call is repeated (every error is checked below).
			var waitErr error
			for range 20 {
				ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
				_, waitErr = ec.Say(ctx, &echov1.SayRequest{Text: "hi"})
				cancel()
				errs = append(errs, fmt.Sprint(waitErr))
				if strings.Contains(fmt.Sprint(waitErr), "REDACTED") {
					break
				}
			}
			_, err = ec.Say(context.Background(), &echov1.SayRequest{Text: "hi"}, client.FailFast())
			errs = append(errs, fmt.Sprint(err))
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			_, err = ec.Countdown(ctx, &echov1.CountdownRequest{Count: 1})
			cancel()
			errs = append(errs, fmt.Sprint(err))
			c.Close()

			var spans []string
			for _, s := range rec.Ended() {
				spans = append(spans, fmt.Sprint(s.Name(), s.Status(), s.Attributes(), s.Events()))
			}
			if len(spans) == 0 {
				t.Fatal("no spans")
			}
			for what, text := range map[string]string{
				"errors": strings.Join(errs, "\n"),
				"logs":   logs.String(),
				"spans":  strings.Join(spans, "\n"),
			} {
				for _, secret := range []string{token, password} {
					if n := strings.Count(text, secret); n > 0 {
						t.Errorf("the credential %q appears %d time(s) in the %s:\n%s", secret, n, what, text)
					}
				}
			}
			if !strings.Contains(fmt.Sprint(waitErr), "REDACTED") {
				t.Errorf("the call's error does not show the redacted URL: %v", waitErr)
			}
		})
	}
}
