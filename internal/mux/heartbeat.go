package mux

// Heartbeats and the read deadline.
//
// ping runs on the heartbeat timer's goroutine (a time.AfterFunc armed in
// New, re-armed by ping, stopped by closeWith): it queues a PING with
// writeUrgent (wmu). touch runs on the reader goroutine (before each
// message, and in gorilla's ping and pong handlers, which run inside the
// reader's reads) and renews the read deadline; setReadDeadline never
// moves it past a lingering close's deadline (lingerUntil, set by linger on
// the goroutine that closes). No other lock is taken.

import (
	"encoding/binary"
	"time"

	"github.com/tetherrpc/tether/internal/frame"
)

// touch renews the read deadline after traffic. Inside a message the
// message's own deadline stands: pongs between fragments do not extend it.
func (c *Conn) touch() {
	if c.inMessage.Load() {
		return
	}
	c.setReadDeadline(time.Now().Add(c.cfg.PingInterval + c.cfg.PingTimeout))
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
	var p [frame.PingPayloadSize]byte
	binary.BigEndian.PutUint64(p[:], uint64(time.Now().UnixNano()))
	c.writeUrgent(func(b []byte) []byte {
		return frame.Append(b, frame.Frame{Type: frame.TypePing, Payload: p[:]})
	})
	c.pingTimer.Reset(c.cfg.PingInterval)
}
