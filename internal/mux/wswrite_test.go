package mux

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// wsSockets returns both ends of a bare WebSocket over 127.0.0.1, closed
// when the test ends.
func wsSockets(t *testing.T) (client, server *websocket.Conn) {
	t.Helper()
	servers := make(chan *websocket.Conn, 1)
	client, hs := dialWS(t, func(ws *websocket.Conn) { servers <- ws })
	server = <-servers
	t.Cleanup(func() {
		client.Close()
		server.Close()
		hs.Close()
	})
	return client, server
}

// wrappedConn hides the TCP connection's type: wsWriter writes to it
// without writev, one Write per frame.
type wrappedConn struct{ net.Conn }

func TestMaskBytesMatchesTheRFC(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for n := range 700 {
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(r.Uint32())
		}
		key := r.Uint32()
		want := bytes.Clone(p)
		for i := range want { // RFC 6455 section 5.3, the key's bytes as on the wire
			want[i] ^= byte(key >> (8 * (i % 4)))
		}
		maskBytes(key, p)
		if !bytes.Equal(p, want) {
			t.Fatalf("%d bytes: masked differently from the RFC's definition", n)
		}
	}
}

// TestWSWriterFramesReadByGorilla writes frames of every length encoding,
// from either side, through writev and through a plain Write, and reads
// them with gorilla/websocket.
func TestWSWriterFramesReadByGorilla(t *testing.T) {
	sizes := []int{0, 1, 125, 126, 1000, slabSize - maxFrameHeader, slabSize, 65535, 65536, 300_000}
	for _, tc := range []struct {
		name            string
		client, wrapped bool
	}{
		{"client", true, false},
		{"server", false, false},
		{"client wrapped", true, true},
		{"server wrapped", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cws, sws := wsSockets(t)
			from, to := sws, cws
			if tc.client {
				from, to = cws, sws
			}
			conn := from.NetConn()
			if tc.wrapped {
				conn = wrappedConn{conn}
			}
			w := newWSWriter(conn, tc.client)
			if w.vectored == tc.wrapped {
				t.Fatalf("vectored = %v for a wrapped connection: %v", w.vectored, tc.wrapped)
			}
			to.SetReadLimit(1 << 20)
			sent := make(chan error, 1)
			var want [][]byte
			for _, n := range sizes {
				p := make([]byte, n)
				for i := range p {
					p[i] = byte(i*7 + n)
				}
				want = append(want, p)
			}
			go func() {
				for _, p := range want {
					// writeData masks a client's payload in place: send a
					// copy, as the writer's batch is its own.
					if err := w.writeData(bytes.Clone(p), time.Now().Add(5*time.Second)); err != nil {
						sent <- err
						return
					}
				}
				sent <- nil
			}()
			for _, p := range want {
				mt, got, err := to.ReadMessage()
				if err != nil {
					t.Fatalf("%d bytes: %v", len(p), err)
				}
				if mt != websocket.BinaryMessage || !bytes.Equal(got, p) {
					t.Fatalf("%d bytes: read type %d, %d bytes, equal %v", len(p), mt, len(got), bytes.Equal(got, p))
				}
			}
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestWSWriterControlFrames: a ping arrives with its payload, a close frame arrives with
// its code and text, and nothing is written after it.
func TestWSWriterControlFrames(t *testing.T) {
	cws, sws := wsSockets(t)
	w := newWSWriter(cws.NetConn(), true)
	pinged := make(chan string, 1)
	sws.SetPingHandler(func(data string) error { pinged <- data; return nil })
	deadline := time.Now().Add(5 * time.Second)
	if err := w.writeControl(websocket.PingMessage, make([]byte, 126), deadline); !errors.Is(err, errControlTooLong) {
		t.Fatalf("a ping of 126 bytes: %v, want errControlTooLong", err)
	}
	if err := w.writeControl(websocket.PingMessage, []byte("are you there"), deadline); err != nil {
		t.Fatal(err)
	}
	if err := w.writeControl(websocket.CloseMessage, closeMessage(4000, "bye"), deadline); err != nil {
		t.Fatal(err)
	}
	if err := w.writeData([]byte("late"), deadline); !errors.Is(err, websocket.ErrCloseSent) {
		t.Fatalf("a data frame after the close frame: %v, want ErrCloseSent", err)
	}
	if err := w.writeControl(websocket.PongMessage, nil, deadline); !errors.Is(err, websocket.ErrCloseSent) {
		t.Fatalf("a pong after the close frame: %v, want ErrCloseSent", err)
	}
	_, _, err := sws.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 4000 || ce.Text != "bye" {
		t.Fatalf("read %v, want the close frame 4000 bye", err)
	}
	if got := <-pinged; got != "are you there" {
		t.Fatalf("ping payload %q", got)
	}
}

// TestWSWriterControlWaitsOnlyUntilItsDeadline: a control frame (a pong on
// the reader goroutine, the close frame) does not wait behind a data write
// longer than its own deadline, as gorilla/websocket's WriteControl.
func TestWSWriterControlWaitsOnlyUntilItsDeadline(t *testing.T) {
	cws, _ := wsSockets(t)
	w := newWSWriter(cws.NetConn(), true)
	<-w.lock // a data write in progress
	start := time.Now()
	err := w.writeControl(websocket.PongMessage, nil, start.Add(50*time.Millisecond))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("writeControl behind a stuck write: %v, want a timeout", err)
	}
	if d := time.Since(start); d < 40*time.Millisecond || d > 2*time.Second {
		t.Fatalf("writeControl gave up after %v, want about 50ms", d)
	}
	w.lock <- struct{}{}
	if err := w.writeControl(websocket.PongMessage, nil, time.Now().Add(time.Second)); err != nil {
		t.Fatalf("writeControl once the write is done: %v", err)
	}
}

// TestWSWriterFailsForGood: after a failed write every later write fails
// with the same error, as gorilla/websocket's did.
func TestWSWriterFailsForGood(t *testing.T) {
	cws, _ := wsSockets(t)
	w := newWSWriter(cws.NetConn(), true)
	cws.NetConn().Close()
	err := w.writeData([]byte("x"), time.Now().Add(time.Second))
	if err == nil {
		t.Fatal("a write on a closed socket succeeded")
	}
	if err2 := w.writeControl(websocket.CloseMessage, closeMessage(1000, ""), time.Now().Add(time.Second)); err2 != err {
		t.Fatalf("next write: %v, want the first error %v", err2, err)
	}
}
