package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
)

// TestSmallMessagesIntact: many small messages of varied sizes stream both
// ways on several streams at once, with receivers that sometimes lag so that
// frames queue up. Small frames share pooled memory (internal/mux/slab.go);
// every message must arrive whole, in order, with its own bytes.
func TestSmallMessagesIntact(t *testing.T) {
	e := newEnv(t, envConfig{})
	ctx := testCtx(t)
	const streams, perStream = 8, 2000
	payload := func(stream, i int) []byte {
		n := (i*7919 + stream*104729) % 6000 // 0 .. 5999 bytes
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(stream*31 + i + j)
		}
		return b
	}
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for st := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			chat, err := e.echo.Chat(ctx)
			if err != nil {
				errs <- err
				return
			}
			go func() {
				for i := range perStream {
					if err := chat.Send(&echov1.ChatRequest{Text: fmt.Sprint(i), Payload: payload(st, i)}); err != nil {
						return
					}
				}
				_ = chat.CloseSend()
			}()
			rng := rand.New(rand.NewPCG(uint64(st), 1))
			for i := 0; ; i++ {
				res, err := chat.Receive()
				if errors.Is(err, io.EOF) {
					if i != perStream {
						errs <- fmt.Errorf("stream %d: %d responses, want %d", st, i, perStream)
					}
					return
				}
				if err != nil {
					errs <- fmt.Errorf("stream %d, message %d: %v", st, i, err)
					return
				}
				if res.GetText() != fmt.Sprint("echo: ", i) || !bytes.Equal(res.GetPayload(), payload(st, i)) {
					errs <- fmt.Errorf("stream %d, message %d: got %q with %d bytes, not the message sent", st, i, res.GetText(), len(res.GetPayload()))
					return
				}
				if rng.IntN(200) == 0 {
					time.Sleep(time.Millisecond) // lag: let frames queue
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
