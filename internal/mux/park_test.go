//go:build unix

package mux

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
)

// parkingServer serves server Conns built from scfg, upgraded the way
// package server does (HijackPooled), and returns its ws:// URL and the
// channel its Conns arrive on.
func parkingServer(t *testing.T, scfg Config) (string, chan *Conn) {
	t.Helper()
	conns := make(chan *Conn, 1)
	up := websocket.Upgrader{}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(hijacker{w}, r, nil)
		if err != nil {
			return
		}
		conns <- New(ws, RoleServer, scfg)
	}))
	t.Cleanup(hs.Close)
	return "ws" + strings.TrimPrefix(hs.URL, "http"), conns
}

// dialParking dials a parkingServer built from scfg with a raw WebSocket
// and returns it with the server's Conn.
func dialParking(t *testing.T, scfg Config) (*websocket.Conn, *Conn) {
	t.Helper()
	url, conns := parkingServer(t, scfg)
	ws, _, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return ws, <-conns
}

// callEOF makes one call on cc, which the server ends with an empty END.
func callEOF(t *testing.T, cc *Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, []byte("x"), true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.RecvMsg(); !errors.Is(err, io.EOF) {
		t.Fatalf("call ended with %v, want io.EOF", err)
	}
}

type hijacker struct{ http.ResponseWriter }

func (h hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return HijackPooled(h.ResponseWriter)
}

// TestIdleServerReaderParks: once an idle server connection has handled a
// call, its reader parks (its goroutine ends, a waiter on a small stack
// takes its place), and calls made afterwards are served as before,
// heartbeats included.
func TestIdleServerReaderParks(t *testing.T) {
	// PINGs every 150 ms: under MaxPingRate (10 a second).
	scfg := Config{
		PingInterval: 150 * time.Millisecond,
		PingTimeout:  5 * time.Second,
		Accept:       func(s *Stream, _ *tetherv1.Open) { _ = s.Finish(nil, nil) },
	}
	ws, sc := dialParking(t, scfg)
	cc := New(ws, RoleClient, Config{PingInterval: 150 * time.Millisecond, PingTimeout: 5 * time.Second})
	t.Cleanup(func() {
		cc.Close()
		sc.Close()
		<-cc.Done()
		<-sc.Done()
	})
	callEOF(t, cc)
	waitFor(t, 10*time.Second, "the idle server reader never parked", func() bool { return sc.parks.Load() > 0 })
	for range 3 {
		parks := sc.parks.Load()
		callEOF(t, cc)
		// Heartbeats wake the parked reader, which parks again.
		waitFor(t, 10*time.Second, "the reader did not park again", func() bool { return sc.parks.Load() > parks+1 })
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("server connection closed: %v", err)
	}
	// A reader parks once per message at most: never again before it has
	// read one (a reader that parked while bytes waited in the socket
	// used to park over and over without reading).
	p0 := sc.parks.Load()
	time.Sleep(500 * time.Millisecond)
	if n := sc.parks.Load() - p0; n > 100 {
		t.Fatalf("the reader parked %d times in 500 ms with a PING every 150 ms", n)
	}
}

// TestParkedReaderReadDeadline: a parked reader keeps the read deadline: a
// peer that goes silent is disconnected after PingInterval + PingTimeout,
// as when the reader is blocked in its read.
func TestParkedReaderReadDeadline(t *testing.T) {
	scfg := Config{
		PingInterval: 50 * time.Millisecond,
		PingTimeout:  100 * time.Millisecond,
		Accept:       func(s *Stream, _ *tetherv1.Open) { _ = s.Finish(nil, nil) },
	}
	ws, sc := dialParking(t, scfg)
	defer ws.Close()
	// One message, then silence: the peer answers nothing, not even PINGs.
	writeFrames(t, ws)
	waitFor(t, 10*time.Second, "the reader never parked", func() bool { return sc.parks.Load() > 0 || sc.isClosed() })
	select {
	case <-sc.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("a silent peer was not disconnected")
	}
	var ne interface{ Timeout() bool }
	if err := sc.Err(); !strings.Contains(err.Error(), "timeout") && !errors.As(err, &ne) {
		t.Fatalf("closed with %v, want a read timeout", err)
	}
}

// A PING that starts a parked reader whose read then succeeds (data came
// before the socket's deadline, which ping saw as passed a little early)
// leaves the heartbeat armed: the reader parks again, the peer goes silent,
// and the connection still closes at the next deadline.
func TestParkedReaderHeartbeatRearmed(t *testing.T) {
	scfg := Config{PingInterval: 50 * time.Millisecond, PingTimeout: 400 * time.Millisecond,
		Accept: func(s *Stream, _ *tetherv1.Open) { _ = s.Finish(nil, nil) }}
	ws, sc := dialParking(t, scfg)
	defer ws.Close()
	writeFrames(t, ws)
	waitFor(t, 10*time.Second, "park", func() bool { return sc.parkState.Load() == 1 })
	sc.lastRecv.Store(sc.lastRecv.Load() - int64(time.Hour)) // ping sees the deadline passed before the socket does
	waitFor(t, 10*time.Second, "ping to unpark", func() bool { return sc.parkState.Load() == 0 })
	writeFrames(t, ws) // before the socket's deadline: the woken read succeeds
	waitFor(t, 10*time.Second, "park again", func() bool { return sc.parks.Load() >= 2 && sc.parkState.Load() == 1 })
	select { // a silent peer from now on: closed within about 450 ms
	case <-sc.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the parked connection of a silent peer never closed: heartbeat timer not re-armed after ping's unpark")
	}
}
