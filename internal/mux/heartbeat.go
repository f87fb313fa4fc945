package mux

// Heartbeats and the read deadline.
//
// ping runs on the heartbeat timer's goroutine (a time.AfterFunc armed in
// New, re-armed by ping, stopped by closeWith). It sends a PING only when
// the connection has not both sent and received a message within the
// interval (lastSent, written by the write token's holder in writeBatch;
// lastRecv, written by touch): traffic both ways already tells each side
// that the other is alive. Otherwise it re-arms itself for when that
// traffic will be an interval old. A client checks every 7/8 of its
// interval, a server every interval, so that between two Go peers the
// client's PINGs and their answers keep both sides quiet and the server
// sends none (the rounds would race otherwise, and both would PING). Either
// way each side still sends a message at least every PingInterval, as
// Tether-Ping-Interval announces, and reads under the same deadline.
//
// The PING is written on the timer's goroutine itself when the writer is
// idle (writeInline, as a unary caller does), instead of waking a writer
// goroutine, and so is a PING's answer on the reader goroutine while the
// connection has no stream (writeHeartbeat); otherwise they are queued
// with writeUrgent (wmu).
//
// touch runs on the reader (before each message, and in gorilla's ping and
// pong handlers, which run inside the reader's reads; the reader goroutine,
// or a unary caller reading its own reply: callerread_linux.go)
// and renews the read deadline; setReadDeadline never moves it past a
// lingering close's deadline (lingerUntil, set by linger on the goroutine
// that closes). No other lock is taken.

import (
	"encoding/binary"
	"math"
	"math/bits"
	"sync/atomic"
	"time"

	"github.com/tetherrpc/tether/internal/frame"
)

// touch renews the read deadline after traffic. Inside a message the
// message's own deadline stands: pongs between fragments do not extend it.
func (c *Conn) touch() {
	if c.inMessage.Load() {
		return
	}
	now := time.Now()
	c.lastRecv.Store(nanotime(now))
	c.setReadDeadline(now.Add(c.silence()))
}

// silence is how long the peer may stay silent: PingInterval +
// PingTimeout, saturating, so that a timeout of math.MaxInt64 (the usual
// "none") does not wrap into a deadline in the past.
func (c *Conn) silence() time.Duration {
	return time.Duration(later(int64(c.cfg.PingInterval), c.cfg.PingTimeout))
}

// later is t + d (d >= 0), saturating instead of wrapping.
func later(t int64, d time.Duration) int64 {
	if s := t + int64(d); s >= t {
		return s
	}
	return math.MaxInt64
}

// startMessageDeadline gives the message whose first frame was just read
// until t to arrive whole (Config.MaxMessageReadTime). On a connection that
// tells of its socket reads (watchReads), the socket's deadline becomes t
// only when the message needs one (socketRead): a message that arrived
// whole with its first frame, nearly every one, costs one change of the
// socket's deadline (touch's) instead of two. Each change takes the
// socket's and its timer's locks: 3% of the CPU of a server answering
// 10,000 connections a call a second each, 1.3% with this.
func (c *Conn) startMessageDeadline(t time.Time) {
	if c.lazyMsgDeadline {
		c.msgDeadline, c.msgPending = t, true
		return
	}
	c.setReadDeadline(t)
}

// socketRead is told by the connection before each read of its socket
// (pooledConn.Read): inside a message, the message's deadline then becomes
// the socket's, so that no read of the message goes on under the heartbeat
// deadline. Reader goroutine.
func (c *Conn) socketRead() {
	if c.msgPending {
		c.msgPending = false
		c.setReadDeadline(c.msgDeadline)
	}
}

// setReadDeadline sets the read deadline, never past a lingering close's.
func (c *Conn) setReadDeadline(t time.Time) {
	_ = c.ws.SetReadDeadline(t)
	if l := c.lingerUntil.Load(); l != 0 && t.UnixNano() > l {
		_ = c.ws.SetReadDeadline(time.Unix(0, l))
	}
}

func (c *Conn) ping() {
	select {
	case <-c.closed:
		return
	default:
	}
	now := time.Now()
	if c.parkConn != nil && nanotime(now) >= c.readDeadline() && c.unpark(true) {
		// A reader parked in the shared poller has no read of its own
		// to time out: its new goroutine reads at once and meets the
		// passed deadline, as a blocked reader would. Its read may
		// still succeed (the socket's deadline is a few µs later, or
		// data came in the meantime): the timer stays armed, or a
		// reader that parks again would have no heartbeat.
		c.armPing()
		return
	}
	check := c.pingCheck()
	if next := later(min(c.lastSent.Load(), c.lastRecv.Load()), check); next > nanotime(now) {
		// Messages went both ways within the interval: no PING needed
		// until they are an interval old.
		c.pingDue.Store(next)
		c.pingTimer.Reset(c.untilDeadline(now, time.Duration(next-nanotime(now))))
		return
	}
	if due := c.pingDue.Load(); due != 0 {
		heartbeats.pingLate.add(nanotime(now) - due)
	}
	heartbeats.pings.Add(1)
	var p [frame.PingPayloadSize]byte
	binary.BigEndian.PutUint64(p[:], uint64(now.UnixNano()))
	c.armPing()
	c.writeHeartbeat(false, func(b []byte) []byte {
		return frame.Append(b, frame.Frame{Type: frame.TypePing, Payload: p[:]})
	})
}

// writeHeartbeat queues a PING or a PING's answer built by fn and, when the
// writer is idle (queue empty, token free, the last write fast), writes it
// on the calling goroutine (writeInline) instead of waking a writer
// goroutine. The reader goroutine (fromReader, answering a PING) writes
// inline only while the connection has no stream: a write that blocks
// (the peer stopped reading) then holds up no call, and fails after
// WriteTimeout, closing the connection, as it would on the writer
// goroutine. Otherwise the frame goes through writeUrgent.
func (c *Conn) writeHeartbeat(fromReader bool, fn func([]byte) []byte) {
	c.wmu.Lock()
	if len(c.wbuf) == 0 && !c.wbusy && !c.wdead && !c.wclosing && !c.wslow && (!fromReader || c.onlyStream(0)) {
		c.wbuf = fn(c.wbuf)
		c.writeInline() // releases wmu
		return
	}
	c.wmu.Unlock()
	c.writeUrgent(fn)
}

// clockBase is the origin of the connection's clock readings (lastSent,
// lastRecv, pingDue): nanoseconds since it on the monotonic clock, so that
// a step of the wall clock (NTP, a resumed VM) neither hurries nor delays
// a heartbeat or a parked reader's deadline.
var clockBase = time.Now()

// nanotime is t (a time.Now reading, or one derived with Add) on the
// connection clock.
func nanotime(t time.Time) int64 { return int64(t.Sub(clockBase)) }

// pingCheck is how long the connection may go without messages both ways
// before a PING is sent: a client's 7/8 of its PingInterval, a server's the
// whole interval (see the file comment).
func (c *Conn) pingCheck() time.Duration {
	if c.role == RoleClient {
		return c.cfg.PingInterval - c.cfg.PingInterval/8
	}
	return c.cfg.PingInterval
}

// armPing arms the heartbeat timer for the next check and records when it
// is due, for the lateness statistics.
func (c *Conn) armPing() {
	d := c.pingCheck()
	now := time.Now()
	c.pingDue.Store(nanotime(now.Add(d)))
	c.pingTimer.Reset(c.untilDeadline(now, d))
}

// readDeadline is the read deadline touch last set (nanotime).
func (c *Conn) readDeadline() int64 {
	return later(c.lastRecv.Load(), c.silence())
}

// untilDeadline shortens the heartbeat timer's delay d so that, on a
// connection whose reader can park, the timer runs at the read deadline
// (ping then starts a parked reader). Touched since, the deadline has
// moved, and ping re-arms the timer.
func (c *Conn) untilDeadline(now time.Time, d time.Duration) time.Duration {
	if c.parkConn == nil || c.lastRecv.Load() == 0 {
		return d
	}
	if until := time.Duration(c.readDeadline() - nanotime(now)); until > 0 && until < d {
		return until
	}
	return d
}

// pongReceived records the round trip of a PING this side sent, from the
// send time its answer carries back. It runs on the reader goroutine.
func (c *Conn) pongReceived(payload []byte) {
	if len(payload) != frame.PingPayloadSize {
		return
	}
	sent := int64(binary.BigEndian.Uint64(payload))
	heartbeats.pongRTT.add(time.Now().UnixNano() - sent)
}

// heartbeats holds the process's heartbeat statistics, over all its
// connections.
var heartbeats struct {
	pingLate, pongRTT latencyHistogram
	pings             atomic.Uint64 // PINGs sent
}

// latencyHistogram counts durations in power-of-two buckets of
// microseconds: bucket i holds durations below 2^i µs (bucket 0: under
// 1 µs), the last one everything longer. It is safe for concurrent use.
type latencyHistogram struct {
	buckets [latencyBuckets]atomic.Uint64
	max     atomic.Int64
}

const latencyBuckets = 40

func (h *latencyHistogram) add(ns int64) {
	ns = max(ns, 0)
	h.buckets[min(bits.Len64(uint64(ns/1000)), latencyBuckets-1)].Add(1)
	raiseTo(&h.max, ns)
}

// raiseTo raises a to v if v is more, against concurrent raises.
func raiseTo(a *atomic.Int64, v int64) {
	for m := a.Load(); v > m && !a.CompareAndSwap(m, v); m = a.Load() {
	}
}

func (h *latencyHistogram) snapshot() LatencyHistogram {
	var s LatencyHistogram
	for i := range h.buckets {
		s.Buckets[i] = h.buckets[i].Load()
	}
	s.Max = time.Duration(h.max.Load())
	return s
}

// LatencyHistogram is a snapshot of durations counted in power-of-two
// buckets of microseconds: Buckets[i] counts durations below 2^i µs and at
// least 2^(i-1) µs (Buckets[0]: under 1 µs; the last bucket: everything
// longer).
type LatencyHistogram struct {
	Buckets [latencyBuckets]uint64
	Max     time.Duration // the longest duration seen since the process started
}

// Count is the number of durations counted.
func (h LatencyHistogram) Count() uint64 {
	var n uint64
	for _, b := range h.Buckets {
		n += b
	}
	return n
}

// Sub returns the durations counted in h and not in base (an earlier
// snapshot); Max stays h's.
func (h LatencyHistogram) Sub(base LatencyHistogram) LatencyHistogram {
	for i := range h.Buckets {
		h.Buckets[i] -= base.Buckets[i]
	}
	return h
}

// Quantile returns an upper bound of the q-quantile (0 < q <= 1): the upper
// edge of the bucket that holds it; 0 when nothing was counted.
func (h LatencyHistogram) Quantile(q float64) time.Duration {
	n := h.Count()
	if n == 0 {
		return 0
	}
	rank := uint64(q*float64(n) + 0.5)
	rank = min(max(rank, 1), n)
	var seen uint64
	for i, b := range h.Buckets {
		seen += b
		if seen >= rank {
			return time.Duration(uint64(1)<<i) * time.Microsecond
		}
	}
	return h.Max
}

// HeartbeatStats describes the heartbeats of every connection of this
// process since it started: how late each PING left against its schedule
// (the heartbeat timer's lateness), and the round trip of each PING this
// side sent, from its send time to its answer's arrival (the peer's
// lateness in answering included). Benchmarks read it to show that
// heartbeats stay on time with many connections.
type HeartbeatStats struct {
	PingLateness LatencyHistogram
	PongRTT      LatencyHistogram
	// Pings is the number of PINGs sent. A side sends one only when its
	// connection has not both sent and received a message within the
	// interval, so between two Go peers the client sends them and the
	// server answers.
	Pings uint64
}

// Heartbeats returns the process's heartbeat statistics.
func Heartbeats() HeartbeatStats {
	return HeartbeatStats{PingLateness: heartbeats.pingLate.snapshot(), PongRTT: heartbeats.pongRTT.snapshot(), Pings: heartbeats.pings.Load()}
}
