package mux

import (
	"context"
	"encoding/binary"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
)

// TestQueueWaitersWake: senders that wait for room in the connection's
// queue (the peer stopped reading, the socket is full) all go on once the
// peer reads again, also after one of them gave up waiting (the writer's
// wake-up for it may go to another), and none is left waiting. The
// writer wakes them on one channel kept for the connection's life
// (takeLocked), not one made for each batch.
func TestQueueWaitersWake(t *testing.T) {
	const streams = 3
	msg := make([]byte, 64<<10)
	var sent [streams]atomic.Int64
	var ctxs [streams]context.Context
	var cancels [streams]context.CancelFunc
	for i := range ctxs {
		ctxs[i], cancels[i] = context.WithCancel(context.Background())
		defer cancels[i]()
	}
	ended := make(chan int, streams)
	ws, sc := rawPeer(t, Config{Accept: func(s *Stream, _ *tetherv1.Open) {
		i := int(s.ID() / 2) // streams 1, 3, 5
		for {
			if err := s.SendMsg(ctxs[i], msg); err != nil {
				if i == 0 && !errors.Is(err, context.Canceled) {
					t.Errorf("stream 1's send ended with %v; want context.Canceled", err)
				}
				s.Reset(err)
				ended <- i
				return
			}
			sent[i].Add(1)
		}
	}})
	open, _ := proto.Marshal(&tetherv1.Open{Procedure: "/a/b"})
	credit := binary.BigEndian.AppendUint32(nil, 1<<30)
	var fs []frame.Frame
	for i := range streams {
		id := uint32(2*i + 1)
		fs = append(fs, frame.Frame{Type: frame.TypeOpen, StreamID: id, Payload: open},
			frame.Frame{Type: frame.TypeWindow, StreamID: id, Payload: credit})
	}
	writeFrames(t, ws, fs...)

	waiters := func() int {
		sc.wmu.Lock()
		defer sc.wmu.Unlock()
		return sc.wwaiters
	}
	total := func() (n int64) {
		for i := range sent {
			n += sent[i].Load()
		}
		return n
	}
	// Every sender waits, and no more goes out: the socket is full.
	waitFor(t, 30*time.Second, "every sender waiting for room", func() bool {
		before := total()
		time.Sleep(50 * time.Millisecond)
		return waiters() == streams && total() == before
	})
	cancels[0]()
	if i := <-ended; i != 0 {
		t.Fatalf("stream %d ended; want stream 1, whose context ended", 2*i+1)
	}
	if n := waiters(); n != streams-1 {
		t.Fatalf("%d senders wait after one gave up; want %d", n, streams-1)
	}

	// The peer reads again: the others go on.
	read := make(chan struct{})
	go func() {
		defer close(read)
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				return
			}
		}
	}()
	var from [streams]int64
	for i := 1; i < streams; i++ {
		from[i] = sent[i].Load()
	}
	waitFor(t, 30*time.Second, "the other senders to go on", func() bool {
		for i := 1; i < streams; i++ {
			if sent[i].Load() < from[i]+64 {
				return false
			}
		}
		return true
	})
	sc.wmu.Lock()
	tokens, n := sc.wtokens, sc.wwaiters
	sc.wmu.Unlock()
	if tokens < 0 || n < 0 || n > streams-1 {
		t.Errorf("%d wake-ups pending for %d waiters", tokens, n)
	}
	for i := 1; i < streams; i++ {
		cancels[i]()
		<-ended
	}
	_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	<-read
}
