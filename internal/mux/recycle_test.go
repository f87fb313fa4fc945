package mux

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
)

// recycleCount counts Recycle calls.
type recycleCount struct{ n atomic.Int32 }

func (r *recycleCount) Recycle() { r.n.Add(1) }

// recycledOnce waits until r has recycled its stream, then checks that it
// was once and stays once.
func recycledOnce(t *testing.T, r *recycleCount) {
	t.Helper()
	waitFor(t, 10*time.Second, "the stream to be recycled", func() bool { return r.n.Load() > 0 })
	time.Sleep(20 * time.Millisecond)
	if n := r.n.Load(); n != 1 {
		t.Fatalf("recycled %d times, want once", n)
	}
}

// notRecycled checks that r's stream has not been recycled within a while.
func notRecycled(t *testing.T, r *recycleCount, why string) {
	t.Helper()
	time.Sleep(30 * time.Millisecond)
	if n := r.n.Load(); n != 0 {
		t.Fatalf("recycled %d times while %s", n, why)
	}
}

// openRecycled opens a recycled stream on cc (SetRecycler), first sent
// with the OPEN (and closeSend).
func openRecycled(t *testing.T, cc *Conn, first []byte, closeSend bool) (*Stream, *recycleCount) {
	t.Helper()
	r := new(recycleCount)
	mem := new(Stream)
	mem.SetRecycler(r)
	s, _, err := cc.OpenInto(context.Background(), mem, &tetherv1.Open{Procedure: "/a/b"}, first, closeSend)
	if err != nil {
		t.Fatal(err)
	}
	return s, r
}

// TestRecycledStreamWaitsForEveryHolder: a stream given a Recycler
// (SetRecycler) is recycled once, only when its caller has released it and
// the connection no longer uses it, however the stream ends and in
// whichever order: the client's unary calls reuse its memory for the next
// call then, so a recycle while the reader or the table still held it would
// hand one call's frames to another.
func TestRecycledStreamWaitsForEveryHolder(t *testing.T) {
	t.Run("answered, released after", func(t *testing.T) {
		cc, _ := pair(t, Config{Accept: func(s *Stream, _ *tetherv1.Open) {
			go func() {
				msg, _ := s.RecvMsg()
				_ = s.FinishWith(nil, msg, nil, nil)
			}()
		}}, Config{})
		s, r := openRecycled(t, cc, []byte("ping"), true)
		if msg, err := s.RecvMsg(); err != nil || string(msg) != "ping" {
			t.Fatalf("RecvMsg = %q, %v", msg, err)
		}
		if _, err := s.RecvMsg(); err != io.EOF {
			t.Fatalf("RecvMsg at the end = %v, want EOF", err)
		}
		notRecycled(t, r, "its caller holds it")
		s.Release()
		recycledOnce(t, r)
	})

	t.Run("released before its end", func(t *testing.T) {
		release := make(chan struct{})
		cc, _ := pair(t, Config{Accept: func(s *Stream, _ *tetherv1.Open) {
			go func() {
				<-release
				_ = s.Finish(nil, nil)
			}()
		}}, Config{})
		s, r := openRecycled(t, cc, []byte("x"), true)
		s.Release()
		notRecycled(t, r, "the connection's table holds it")
		close(release)
		recycledOnce(t, r)
	})

	t.Run("reset by the caller", func(t *testing.T) {
		cc, _ := pair(t, Config{Accept: func(*Stream, *tetherv1.Open) {}}, Config{})
		s, r := openRecycled(t, cc, nil, false)
		s.Reset(tether.Errorf(tether.CodeCanceled, "gave up"))
		notRecycled(t, r, "its caller holds it")
		s.Release()
		recycledOnce(t, r)
	})

	t.Run("connection closed", func(t *testing.T) {
		cc, _ := pair(t, Config{Accept: func(*Stream, *tetherv1.Open) {}}, Config{})
		s, r := openRecycled(t, cc, nil, false)
		s.Release()
		notRecycled(t, r, "the connection's table holds it")
		cc.Close()
		recycledOnce(t, r)
		if _, err := s.RecvMsg(); err == nil {
			// Not allowed after Release in real use; here the memory is
			// not reused, and the stream must have ended.
			t.Fatal("RecvMsg on a stream of a closed connection succeeded")
		}
	})

	t.Run("refused by GOAWAY", func(t *testing.T) {
		opened := make(chan struct{})
		cc := rawServer(t, Config{}, func(ws *websocket.Conn) {
			if _, _, err := ws.ReadMessage(); err != nil { // the OPEN
				return
			}
			close(opened)
			payload, _ := proto.Marshal(&tetherv1.GoAway{LastStreamId: 0})
			writeFrames(t, ws, frame.Frame{Type: frame.TypeGoAway, Payload: payload})
			for {
				if _, _, err := ws.ReadMessage(); err != nil {
					return
				}
			}
		})
		s, r := openRecycled(t, cc, []byte("x"), true)
		<-opened
		if _, err := s.RecvMsg(); !errors.Is(err, ErrUnprocessed) {
			t.Fatalf("RecvMsg after GOAWAY = %v, want unprocessed", err)
		}
		notRecycled(t, r, "its caller holds it")
		s.Release()
		recycledOnce(t, r)
	})

	t.Run("other streams are not counted", func(t *testing.T) {
		cc, _ := pair(t, Config{Accept: func(s *Stream, _ *tetherv1.Open) { _ = s.Finish(nil, nil) }}, Config{})
		s, _, err := cc.Open(context.Background(), &tetherv1.Open{Procedure: "/a/b"}, nil, true)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.RecvMsg(); err != io.EOF {
			t.Fatalf("RecvMsg = %v, want EOF", err)
		}
		s.Release() // a no-op
		if n := s.refs.Load(); n != 0 {
			t.Fatalf("a stream without a recycler counts %d holders", n)
		}
	})
}

// TestClearZeroesAllButTheWakeChannel: a recycled stream's memory is used
// again as a zero Stream (OpenInto); Clear keeps only its wake-up channel,
// drained.
func TestClearZeroesAllButTheWakeChannel(t *testing.T) {
	cc, _ := pair(t, Config{Accept: func(s *Stream, _ *tetherv1.Open) {
		go func() {
			msg, _ := s.RecvMsg()
			_ = s.FinishWith(tether.Metadata{"k": {"v"}}, msg, nil, nil)
		}()
	}}, Config{})
	var r recycleCount
	var mem Stream
	mem.SetRecycler(&r)
	s, _, err := cc.OpenInto(context.Background(), &mem, &tetherv1.Open{Procedure: "/a/b"}, []byte("ping"), true)
	if err != nil {
		t.Fatal(err)
	}
	// The wake-up channel, as a receiver that had to wait makes it (the
	// answer may be queued before RecvMsg looks: then none is made).
	mem.mu.Lock()
	mem.recvWakeLocked()
	mem.mu.Unlock()
	for {
		if _, err := s.RecvMsg(); err != nil {
			break
		}
	}
	s.Release()
	recycledOnce(t, &r)
	wake := mem.recvNotify
	notify(wake) // a stale wake-up, as a late notifier would leave
	mem.Clear()
	if mem.recvNotify != wake || len(wake) != 0 {
		t.Fatalf("Clear kept %v (len %d), want the same channel drained", mem.recvNotify, len(wake))
	}
	v := reflect.ValueOf(&mem).Elem()
	for i := range v.NumField() {
		if name := v.Type().Field(i).Name; name != "recvNotify" && !v.Field(i).IsZero() {
			t.Errorf("Clear left %s set", name)
		}
	}
}

// zeroingRecycler clears its stream as the client's unary calls do before
// the memory is reused, so that a recycle while anything still used the
// stream shows as a data race or a wrong answer, and a second recycle
// fails the test.
type zeroingRecycler struct {
	st *Stream
	n  atomic.Int32
}

func (z *zeroingRecycler) Recycle() {
	if z.n.Add(1) != 1 {
		panic("stream recycled twice")
	}
	z.st.Clear()
}

// TestRecycledStreamsUnderChurn: recycled streams whose memory is cleared
// on Recycle, opened by the dozen while the server answers, answers late,
// resets or never answers, callers give up at random deadlines or reset,
// and the server sends GOAWAY or the client closes mid-flight: each caller
// gets its own answer or an error, and every stream is recycled exactly
// once. (Seeded; run it with -race.)
func TestRecycledStreamsUnderChurn(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 7))
	open := &tetherv1.Open{Procedure: "/a/b"}
	for round := range 20 {
		accept := func(s *Stream, _ *tetherv1.Open) {
			r := rand.New(rand.NewPCG(uint64(seed), uint64(s.ID())))
			go func() {
				msg, err := s.RecvMsg()
				if err != nil {
					return
				}
				switch r.IntN(4) {
				case 0: // late
					time.Sleep(time.Duration(r.IntN(3000)) * time.Microsecond)
					_ = s.FinishWith(nil, msg, nil, nil)
				case 1:
					s.Reset(tether.Errorf(tether.CodeAborted, "no"))
				case 2: // never: the connection's end ends it
				default:
					_ = s.FinishWith(nil, msg, nil, nil)
				}
			}()
		}
		cc, sc := pair(t, Config{Accept: accept}, Config{})
		const calls = 40
		recyclers := make([]*zeroingRecycler, calls)
		var wg sync.WaitGroup
		for i := range calls {
			mem := new(Stream)
			z := &zeroingRecycler{st: mem}
			recyclers[i] = z
			mem.SetRecycler(z)
			deadline := time.Duration(rng.IntN(5000)) * time.Microsecond
			resetAt := rng.IntN(4) == 0
			wg.Go(func() {
				defer mem.Release()
				ctx, cancel := context.WithTimeout(context.Background(), deadline)
				defer cancel()
				payload := fmt.Appendf(nil, "round %d call %d", round, i)
				s, _, err := cc.OpenInto(ctx, mem, open, payload, true)
				if err != nil {
					return
				}
				if resetAt {
					s.Reset(tether.Errorf(tether.CodeCanceled, "gave up"))
					return
				}
				msg, err := s.RecvMsgCtx(ctx)
				if err == ErrWaitCanceled {
					s.Reset(tether.Errorf(tether.CodeDeadlineExceeded, "late"))
					return
				}
				if err == nil && string(msg) != string(payload) {
					t.Errorf("round %d call %d got %q", round, i, msg)
				}
			})
		}
		time.Sleep(time.Duration(rng.IntN(2000)) * time.Microsecond)
		switch rng.IntN(3) {
		case 0:
			sc.GoAway(tether.CodeUnavailable, "draining")
		case 1:
			cc.Close()
		}
		wg.Wait()
		cc.Close()
		waitFor(t, 10*time.Second, "every stream recycled", func() bool {
			for _, z := range recyclers {
				if z.n.Load() == 0 {
					return false
				}
			}
			return true
		})
	}
}
