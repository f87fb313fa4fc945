package mux

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
)

// TestIdleThroughHeartbeats (issue 10 item 17): a connection that stays idle
// through several heartbeats must not race on its heartbeat timer (run
// with -race), and both ends must stay up and usable, their PINGs answered.
func TestIdleThroughHeartbeats(t *testing.T) {
	scfg := Config{
		PingInterval: 20 * time.Millisecond,
		PingTimeout:  5 * time.Second,
		Accept:       func(s *Stream, _ *tetherv1.Open) { _ = s.Finish(nil, nil) },
	}
	ccfg := Config{PingInterval: 20 * time.Millisecond, PingTimeout: 5 * time.Second}
	cc, sc := pair(t, scfg, ccfg)
	// Idle through about ten heartbeats of each side: every PING is answered
	// with a PING ACK, so both readers see traffic.
	in, out := sc.BytesIn(), cc.BytesIn()
	time.Sleep(200 * time.Millisecond)
	waitFor(t, 10*time.Second, "no PING traffic while idle", func() bool {
		return sc.BytesIn() >= in+4*(10+8) && cc.BytesIn() >= out+4*(10+8)
	})
	if err := cc.Err(); err != nil {
		t.Fatalf("client connection closed while idle: %v", err)
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("server connection closed while idle: %v", err)
	}
	// Still usable.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, []byte("x"), true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.RecvMsg(); err == nil {
		t.Fatal("unexpected message")
	}
}

// TestHeartbeatStats: PINGs sent on schedule and their answers are counted
// in the process's heartbeat statistics, with a lateness and a round trip.
func TestHeartbeatStats(t *testing.T) {
	before := Heartbeats()
	cfg := Config{PingInterval: 20 * time.Millisecond, PingTimeout: 5 * time.Second}
	pair(t, cfg, cfg)
	waitFor(t, 10*time.Second, "no heartbeats counted", func() bool {
		now := Heartbeats()
		return now.PingLateness.Sub(before.PingLateness).Count() >= 4 && now.PongRTT.Sub(before.PongRTT).Count() >= 4
	})
	rtt := Heartbeats().PongRTT
	if q := rtt.Quantile(0.5); q <= 0 || q > rtt.Max*2+time.Microsecond {
		t.Fatalf("median round trip bound %v with a maximum of %v", q, rtt.Max)
	}
	var h LatencyHistogram
	h.Buckets[3] = 1 // one duration in [4 µs, 8 µs)
	if q := h.Quantile(0.99); q != 8*time.Microsecond {
		t.Fatalf("Quantile = %v, want 8µs", q)
	}
}

// rawPingCounter reads every message from ws (a raw client) until it
// fails, counting the PINGs without ACK the server sent.
func rawPingCounter(ws *websocket.Conn) (pings *atomic.Int32, done chan struct{}) {
	pings, done = new(atomic.Int32), make(chan struct{})
	go func() {
		defer close(done)
		for {
			_, b, err := ws.ReadMessage()
			if err != nil {
				return
			}
			for len(b) >= frame.HeaderSize {
				f, rest, err := frame.Parse(b)
				if err != nil {
					return
				}
				if f.Type == frame.TypePing && f.Flags&frame.FlagAck == 0 {
					pings.Add(1)
				}
				b = rest
			}
		}
	}()
	return pings, done
}

// TestServerQuietWhilePinged (issue 15): a server whose peer PINGs it more
// often than its own interval hears from it and answers it, so messages go
// both ways within every interval: it sends no PING of its own (before,
// it sent one every interval whatever the traffic).
func TestServerQuietWhilePinged(t *testing.T) {
	const interval = 300 * time.Millisecond
	ws, sc := rawPeer(t, Config{PingInterval: interval, PingTimeout: 10 * time.Second, MaxPingRate: 100})
	pings, done := rawPingCounter(ws)
	// PING every 30 ms for 10 intervals; a gap of more than a third of the
	// interval (a loaded machine) excuses one server PING.
	excused := 0
	last := time.Now()
	for end := last.Add(10 * interval); time.Now().Before(end); {
		var p [frame.PingPayloadSize]byte
		b := frame.Append(nil, frame.Frame{Type: frame.TypePing, Payload: p[:]})
		if err := ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
			t.Fatal(err)
		}
		time.Sleep(30 * time.Millisecond)
		now := time.Now()
		if now.Sub(last) > interval/3 {
			excused++
		}
		last = now
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("server closed: %v", err)
	}
	if n := int(pings.Load()); n > excused+1 { // +1: the first check, before any traffic
		t.Fatalf("server sent %d PINGs while pinged every 30 ms (%d excused by scheduling gaps)", n, excused)
	}
	ws.Close()
	<-done
}

// TestServerPingsWhileOnlyReceiving (issue 15): traffic one way is not
// enough: a server that receives messages but sends none still PINGs every
// interval, so that its peer hears from it as Tether-Ping-Interval
// promises, and a silent peer stays detected.
func TestServerPingsWhileOnlyReceiving(t *testing.T) {
	const interval = 100 * time.Millisecond
	ws, sc := rawPeer(t, Config{PingInterval: interval, PingTimeout: 10 * time.Second})
	pings, done := rawPingCounter(ws)
	// Unsolicited PING ACKs: frames the server counts and does not answer.
	stop := time.Now().Add(5 * time.Second)
	for pings.Load() < 3 && time.Now().Before(stop) {
		var p [frame.PingPayloadSize]byte
		b := frame.Append(nil, frame.Frame{Type: frame.TypePing, Flags: frame.FlagAck, Payload: p[:]})
		if err := ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := pings.Load(); n < 3 {
		t.Fatalf("server sent %d PINGs in 5 s of receiving only, interval %v", n, interval)
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("server closed: %v", err)
	}
	ws.Close()
	<-done
}

// TestIdlePingWrittenInline (issue 15): on an idle connection the heartbeat
// timer writes its PING itself, and the peer's reader its answer, instead of
// starting a writer goroutine (which would then linger for writerLinger):
// sampled between PINGs, neither side's writer goroutine is mostly running.
// Before, with a PING every 50 ms and a writer lingering 100 ms after each,
// both nearly always were.
func TestIdlePingWrittenInline(t *testing.T) {
	cfg := Config{PingInterval: 50 * time.Millisecond, PingTimeout: 10 * time.Second}
	cc, sc := pair(t, Config{PingInterval: time.Hour, PingTimeout: time.Hour}, cfg)
	before := Heartbeats().Pings
	running, answering, samples := 0, 0, 0
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(7 * time.Millisecond) {
		cc.wmu.Lock()
		if cc.wrunning {
			running++
		}
		cc.wmu.Unlock()
		sc.wmu.Lock()
		if sc.wrunning {
			answering++
		}
		sc.wmu.Unlock()
		samples++
	}
	if Heartbeats().Pings-before < 5 {
		t.Fatalf("%d PINGs in a second at a 50 ms interval", Heartbeats().Pings-before)
	}
	if running*2 > samples {
		t.Fatalf("the client's writer goroutine ran in %d of %d samples of an idle connection", running, samples)
	}
	if answering*2 > samples {
		t.Fatalf("the server's writer goroutine ran in %d of %d samples of an idle connection", answering, samples)
	}
	if err := cc.Err(); err != nil {
		t.Fatal(err)
	}
}

// TestPingBurstAnsweredByWriter: PINGs that come close together are
// answered through the writer goroutine, batched, not each inline by the
// reader (a write per PING, and a reader blocked in a write once the peer
// stops reading, where the queue's bound should close the connection).
func TestPingBurstAnsweredByWriter(t *testing.T) {
	ws, sc := rawPeer(t, Config{PingInterval: time.Hour, PingTimeout: time.Hour, MaxPingRate: 1e9, MaxIdleFrameRate: 1e9})
	var burst []byte
	for i := range 200 {
		var p [frame.PingPayloadSize]byte
		p[0] = byte(i)
		burst = frame.Append(burst, frame.Frame{Type: frame.TypePing, Payload: p[:]})
	}
	before := sc.inlines.Load()
	if err := ws.WriteMessage(websocket.BinaryMessage, burst); err != nil {
		t.Fatal(err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	for got := 0; got < 200; {
		_, msg, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("after %d answers: %v", got, err)
		}
		fs, ok := parseFrames(t, msg)
		if !ok {
			t.FailNow()
		}
		for _, f := range fs {
			if f.Type == frame.TypePing && f.Flags&frame.FlagAck != 0 {
				got++
			}
		}
	}
	if n := sc.inlines.Load() - before; n > 1 {
		t.Errorf("%d of a burst of 200 PINGs were answered inline; want at most the first", n)
	}
}
