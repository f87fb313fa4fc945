package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var payloadSizes = []int{0, 1, 64 << 10, 4 << 20}

func payload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>9)
	}
	return b
}

func TestUnary(t *testing.T) {
	e := newEnv(t, envConfig{})
	ctx := testCtx(t)
	for _, n := range payloadSizes {
		p := payload(n)
		var trailer tether.Metadata
		res, err := e.echo.Say(ctx, &echov1.SayRequest{Text: "hi", Payload: p}, client.WithResponseTrailer(&trailer))
		if err != nil {
			t.Fatalf("Say(%d bytes): %v", n, err)
		}
		if res.GetText() != "hi" || !bytes.Equal(res.GetPayload(), p) {
			t.Fatalf("Say(%d bytes): wrong response (%d bytes)", n, len(res.GetPayload()))
		}
		if got := trailer.Get("echo-length"); got != fmt.Sprint(n) {
			t.Fatalf("trailer echo-length = %q, want %d", got, n)
		}
	}
	// A message of 0 bytes: every field empty.
	res, err := e.echo.Say(ctx, &echov1.SayRequest{})
	if err != nil || res.GetText() != "" {
		t.Fatalf("empty Say: %v %v", res, err)
	}
}

func TestServerStream(t *testing.T) {
	e := newEnv(t, envConfig{})
	ctx := testCtx(t)
	for _, tc := range []struct {
		count uint32
		size  int
	}{{0, 0}, {5, 0}, {100, 1 << 10}, {3, 4 << 20}} {
		p := payload(tc.size)
		stream, err := e.echo.Countdown(ctx, &echov1.CountdownRequest{Count: tc.count, Payload: p})
		if err != nil {
			t.Fatal(err)
		}
		want := tc.count
		for {
			res, err := stream.Receive()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("Receive: %v", err)
			}
			if res.GetValue() != want || !bytes.Equal(res.GetPayload(), p) {
				t.Fatalf("got value %d (%d bytes), want %d (%d bytes)", res.GetValue(), len(res.GetPayload()), want, len(p))
			}
			want--
		}
		if want != 0 {
			t.Fatalf("stream ended early: %d left", want)
		}
		stream.Close()
	}
}

func TestClientStream(t *testing.T) {
	e := newEnv(t, envConfig{})
	ctx := testCtx(t)
	for _, texts := range [][]string{nil, {"a"}, {"a", "b", "c"}, {strings.Repeat("x", 4<<20)}} {
		stream, err := e.echo.Collect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range texts {
			if err := stream.Send(&echov1.CollectRequest{Text: s}); err != nil {
				t.Fatalf("Send: %v", err)
			}
		}
		res, err := stream.CloseAndReceive()
		if err != nil {
			t.Fatalf("CloseAndReceive: %v", err)
		}
		if res.GetJoined() != strings.Join(texts, " ") || res.GetCount() != uint32(len(texts)) {
			t.Fatalf("got %d texts, want %d", res.GetCount(), len(texts))
		}
	}
}

func TestBidiStream(t *testing.T) {
	e := newEnv(t, envConfig{})
	ctx := testCtx(t)
	for _, n := range []int{0, 1, 10} {
		for _, size := range []int{0, 4 << 20} {
			if size > 0 && n > 1 {
				continue
			}
			stream, err := e.echo.Chat(ctx)
			if err != nil {
				t.Fatal(err)
			}
			p := payload(size)
			for i := range n {
				if err := stream.Send(&echov1.ChatRequest{Text: fmt.Sprint(i), Payload: p}); err != nil {
					t.Fatal(err)
				}
				res, err := stream.Receive()
				if err != nil {
					t.Fatal(err)
				}
				if res.GetText() != "echo: "+fmt.Sprint(i) || !bytes.Equal(res.GetPayload(), p) {
					t.Fatalf("got %q", res.GetText())
				}
			}
			if err := stream.CloseSend(); err != nil {
				t.Fatal(err)
			}
			if _, err := stream.Receive(); !errors.Is(err, io.EOF) {
				t.Fatalf("after CloseSend: %v, want io.EOF", err)
			}
		}
	}
}

// TestConcurrentMixed runs 1,000 calls of all four kinds at once over the
// client's one connection.
func TestConcurrentMixed(t *testing.T) {
	e := newEnv(t, envConfig{})
	ctx := testCtx(t)
	const calls = 1000
	var wg sync.WaitGroup
	errs := make(chan error, calls)
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- mixedCall(ctx, e.echo, i)
		}()
	}
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		if err != nil {
			failed++
			if failed < 5 {
				t.Error(err)
			}
		}
	}
	if failed > 0 {
		t.Fatalf("%d of %d calls failed", failed, calls)
	}
}

func mixedCall(ctx context.Context, c echov1.EchoServiceClient, i int) error {
	text := fmt.Sprint("call-", i)
	switch i % 4 {
	case 0:
		res, err := c.Say(ctx, &echov1.SayRequest{Text: text, Payload: payload(i)})
		if err != nil {
			return err
		}
		if res.GetText() != text || len(res.GetPayload()) != i {
			return fmt.Errorf("call %d: wrong response", i)
		}
	case 1:
		s, err := c.Countdown(ctx, &echov1.CountdownRequest{Count: 10})
		if err != nil {
			return err
		}
		defer s.Close()
		n := 0
		for {
			_, err := s.Receive()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return err
			}
			n++
		}
		if n != 10 {
			return fmt.Errorf("call %d: %d responses, want 10", i, n)
		}
	case 2:
		s, err := c.Collect(ctx)
		if err != nil {
			return err
		}
		defer s.Close()
		for range 5 {
			if err := s.Send(&echov1.CollectRequest{Text: text}); err != nil {
				return err
			}
		}
		res, err := s.CloseAndReceive()
		if err != nil {
			return err
		}
		if res.GetCount() != 5 {
			return fmt.Errorf("call %d: count %d", i, res.GetCount())
		}
	case 3:
		s, err := c.Chat(ctx)
		if err != nil {
			return err
		}
		defer s.Close()
		for j := range 3 {
			if err := s.Send(&echov1.ChatRequest{Text: text}); err != nil {
				return err
			}
			res, err := s.Receive()
			if err != nil {
				return fmt.Errorf("call %d message %d: %w", i, j, err)
			}
			if res.GetText() != "echo: "+text {
				return fmt.Errorf("call %d: got %q", i, res.GetText())
			}
		}
		_ = s.CloseSend()
		if _, err := s.Receive(); !errors.Is(err, io.EOF) {
			return fmt.Errorf("call %d: end: %v", i, err)
		}
	}
	return nil
}
