//go:build linux

package mux

// A receiver reads for itself (Linux).
//
// A unary call made one at a time used to end with a hand-off: the client's
// reader goroutine read the reply and woke the caller. With a P idle, the
// runtime wakes a thread for every such wake-up, and the thread finds
// nothing to run: a client ran 3.7 context switches and 1.9 futex calls per
// call, against the raw echo's 1.5 and 0.3, and its calls took 48 µs at
// GOMAXPROCS=1 against 69 µs at 2 (docs/benchmarks/HISTORY.md, seventeenth pass).
// A stream whose messages are answered one at a time (a bidi ping-pong)
// paid the same hand-off on both sides for every message: the reader woke
// the client's receiver, and on the server the handler waiting in RecvMsg
// (eighteenth pass).
//
// Instead, no goroutine reads a connection between such messages: its
// reader, after two messages in a row, less than parkAfter apart, that each
// left it ready for a receiver's own read (noteReady: a client's with no
// stream, after calls made one after another; or either side's with one
// stream only, whose receiver waited for the small message and got it
// whole), and no byte read waiting (quiet, which the connection can tell
// from its tracked reads: frametrack.go), puts the socket in the shared
// poller and ends (stepAside), as a parked server reader does. A receiver
// that finds its queue empty, its stream the connection's only one, and the
// socket in the poller (a unary caller waiting for its reply, a stream's
// RecvMsg, a handler's) takes the socket out (takeFromPoller) and is the
// connection's reader until its message or its stream's end has come
// (readFor): it waits for the socket itself (the runtime's poller wakes it
// directly, as it wakes a raw echo's caller), reads and handles the
// messages that arrive (other streams' frames, a new stream's OPEN, whose
// Accept goes to a handler goroutine, PINGs, a GOAWAY) as the reader would,
// and once its message is queued puts the socket back in the poller
// (handBack). Bytes that come while no one reads start a reader goroutine
// from the poller, as for a parked connection.
//
// The receiver reads a message only once all of it is in the buffer it read
// the socket into (frameTracker.messageEnd): it never waits inside a
// message, where stopping would break gorilla/websocket's reader. What is
// left, part of a message, it hands to a reader goroutine, and waits on its
// queue as any receiver does. Its wait for the socket stops when its
// context ends, another goroutine resets its stream (cutReceiver), or the
// connection closes: cutCaller, from a context.AfterFunc, the stream's
// terminate or closeWith, moves the socket's read deadline to the past; the
// receiver then restores the heartbeat's deadline and hands the socket back.
// A read deadline that passes, the peer's FIN or a failed read start a
// reader goroutine that meets it at once (woke), as the heartbeat timer does
// for a parked reader.

import (
	"context"
	"time"
)

// stepAside puts the socket of a connection ready for a receiver's own read
// (noteReady) in the shared poller, where the receiver can take it
// (readFor), and reports whether it did: the reader goroutine then ends.
// Only for messages answered one at a time: the message before also left
// the connection ready (with many calls in flight, an empty table is a
// moment when the pipeline has drained, and the next replies would wait for
// the poller instead of a reader already waiting for them; an upload's
// WINDOW frames feed no receiver), and it came less than parkAfter after
// the one before it (calls made now and then, as a push fleet's, gain
// nothing: their wake-ups find the Ps busy or the thread asleep anyway, and
// the take and hand-back cost two epoll_ctl and the poller's lock each).
// Also only where the reads are tracked, no byte read waits, no other
// connection of its role lent in the last lendApart, and GOMAXPROCS is
// above 1 (pollPark's lend: with one P a wake-up wakes no thread, which is
// what this saves). Reader goroutine, at a message's end.
func (c *Conn) stepAside() bool {
	pc := c.parkConn
	if pc == nil || pc.track == nil || pc.track.state == trackOff {
		return false
	}
	ready, was := c.noteReady()
	if !ready || !was || c.quietGap || c.isClosed() || c.lingerUntil.Load() != 0 || !pc.quiet() || !c.mayLend() {
		return false
	}
	id, at := c.lendID, c.lastMsg // the reader's fields are not its own once parked
	_, ok := c.pollPark(true)
	if ok {
		c.lent(id, at)
	}
	return ok
}

// readFor makes the goroutine of s's receiver, waiting for a message (a
// unary caller's reply), the connection's reader until one has come, if s
// is the connection's only stream and its socket waits in the shared poller
// (see the file comment). It returns when a message or the stream's end is
// queued, or it has handed the reading on (ctx ended, the stream was reset,
// the connection closed or failed, part of a message arrived); the receiver
// then looks at its queue again. ctx may be nil (RecvMsg).
func (c *Conn) readFor(s *Stream, ctx context.Context) {
	pc := c.parkConn
	if pc == nil || pc.track == nil || ctx != nil && ctx.Err() != nil {
		return
	}
	c.mu.Lock()
	alone := len(c.streams) == 1 && c.streams[s.id] == s
	c.mu.Unlock()
	if !alone || !c.takeFromPoller() {
		return
	}
	// The reader from here on: the reader's fields are this goroutine's.
	c.woke, c.touched = false, false
	if c.cutFn == nil {
		c.cutFn = c.cutCaller // once: a method value per call would allocate
	}
	c.cutMu.Lock()
	c.cutArmed, c.cutDone = true, false
	c.cutMu.Unlock()
	c.readingFor.Store(s) // a Reset of s from now on cuts the wait (cutReceiver)
	var stop func() bool
	if ctx != nil && ctx.Done() != nil {
		stop = context.AfterFunc(ctx, c.cutFn) // at once if ctx has ended
	}
	if c.isClosed() { // closeWith may have looked for a caller to cut before this one armed
		c.disarm(stop)
		c.handBack()
		return
	}
	for !s.replied() {
		// (Checked first too: the reader that stepped aside may have
		// queued the reply after this goroutine looked.)
		if err := pc.fill(); err != nil {
			if c.disarm(stop) && nanotime(time.Now()) < c.readDeadline() {
				c.handBack() // ctx ended, or the connection closed
			} else {
				// The read deadline passed (with or without a cut),
				// the peer's FIN came or the read failed: a reader meets
				// it at once, as the heartbeat timer starts a parked one.
				readers.start(readerJob{c: c, woke: true})
			}
			return
		}
		if !pc.track.messageEnd(pc.buffered()) {
			c.disarm(stop)
			c.readOn() // it reads the message as it comes
			return
		}
		c.inReadOne.Store(true)
		ok := c.readOne(&c.rs)
		c.inReadOne.Store(false)
		if j := c.lone; j.c != nil {
			// A server's OPEN that started the connection's only running
			// stream (which this receiver's is not, then): its Accept
			// goes to a handler goroutine, not to this one (handOff).
			c.lone = acceptJob{}
			startHandler(j)
		}
		c.lastLone = false
		if !ok {
			c.disarm(stop)
			goReader(c.readerEnd)
			return
		}
		c.ownReads.Add(1)
		c.touch()
		if ctx != nil && ctx.Err() != nil || c.isClosed() || c.wasCut() {
			// A cut that came before touch was undone by it: ctx, the
			// close or cutDone tells of it (cutDone also of a cut by
			// an earlier caller's AfterFunc that ran late, which costs
			// this caller its read, not its own cut).
			break
		}
	}
	c.disarm(stop)
	c.handBack()
}

// replied reports whether a message or the end of s is queued.
func (s *Stream) replied() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.recvQ.len() > 0 || s.recvEnd != nil
}

// noteReady reports whether the message just handled left the connection
// ready for a receiver's own read: a client's with no stream (calls made one
// after another), or any with one only, whose receiver waited for the
// message and got it whole (Stream.fed: a stream's messages answered one at a
// time), the message small enough to be read whole at once; and whether the
// message before did too (lastReady), which it updates. (A server's
// connection with no stream has no receiver to read it: its next OPEN is
// best read by a reader already waiting.) Reader.
func (c *Conn) noteReady() (ready, was bool) {
	c.mu.Lock()
	n := len(c.streams)
	fed := false
	if n == 1 {
		for _, s := range c.streams {
			// In the table, under mu: not recycled meanwhile. The
			// mark is taken: a later message must feed it again.
			fed, s.fed = s.fed, false
		}
	}
	c.mu.Unlock()
	// A message too large for one read (pooledReadSize) is never whole in
	// the receiver's buffer: it would only take the socket to hand it on.
	ready = (fed || n == 0 && c.role == RoleClient) && c.lastMsgLen <= maxOwnRead
	was, c.lastReady = c.lastReady, ready
	return ready, was
}

// maxOwnRead is the largest message a receiver reading the connection
// itself can find whole in its buffer (a pooled read's, less the largest
// frame header).
const maxOwnRead = pooledReadSize - 14

// cutReceiver cuts the wait of s's receiver if it is reading the connection
// (readFor): another goroutine reset s (terminate). Not while the receiver
// handles a message it read (it may be the one resetting s; it looks at its
// queue when done).
func (c *Conn) cutReceiver(s *Stream) {
	if c.readingFor.Load() == s && !c.inReadOne.Load() {
		c.cutCaller()
	}
}

// handBack ends a receiver's reading (readFor): the socket goes back to the
// shared poller if the connection is ready for a receiver's read again
// (noteReady: other streams' messages are better read by a reader goroutine
// already waiting for them), the message came less than parkAfter after the
// one before (as stepAside asks: calls made now and then do not keep taking
// the socket), no byte read waits and no other connection of its role lent
// in the last lendApart; a server's connection parks if its reader would
// (shouldPark: the message came after a quiet spell); else a reader
// goroutine reads on.
func (c *Conn) handBack() {
	if ready, _ := c.noteReady(); ready && !c.quietGap && c.parkConn.quiet() && !c.isClosed() && c.lingerUntil.Load() == 0 && c.mayLend() {
		id, at := c.lendID, c.lastMsg
		if _, ok := c.pollPark(true); ok {
			c.lent(id, at)
			return
		}
	}
	if c.shouldPark() {
		// A server's message that came after a quiet spell: the
		// connection parks, as its reader would have at the top of its
		// loop, rather than a reader goroutine blocking through the next
		// spell (readOn's reader renews no deadline, so it would not ask).
		c.park()
		return
	}
	c.readOn()
}

// readOn starts a reader goroutine that reads on from where the caller
// stopped, without renewing the read deadline first (touched, as handOff
// does): the caller renewed it after each message it read, and nothing came
// since (a cut caller must not keep a silent peer alive).
func (c *Conn) readOn() {
	c.touched = true
	readers.start(readerJob{c: c, cont: true})
}

// cutCaller stops the wait of a receiver reading the connection (readFor),
// if one is armed: its socket's read deadline moves to the past. Run by the
// receiver's context.AfterFunc, by closeWith, and by cutReceiver when
// another goroutine resets the receiver's stream. The arm stays until the
// caller disarms: a second cut moves the deadline to the past again, after
// closeWith's linger has moved it to the future.
func (c *Conn) cutCaller() {
	c.cutMu.Lock()
	defer c.cutMu.Unlock()
	if c.cutArmed {
		c.cutDone = true
		_ = c.parkConn.SetReadDeadline(time.Unix(1, 0))
	}
}

// wasCut reports whether a cut came for the caller now reading.
func (c *Conn) wasCut() bool {
	c.cutMu.Lock()
	defer c.cutMu.Unlock()
	return c.cutDone
}

// disarm ends the cut of a caller's wait (stop, its AfterFunc's, may be
// nil) and reports whether the cut came: the read deadline is then the
// heartbeat's again (setReadDeadline: never past a lingering close's).
func (c *Conn) disarm(stop func() bool) (cut bool) {
	if stop != nil {
		stop()
	}
	c.readingFor.Store(nil)
	c.cutMu.Lock()
	cut = c.cutDone
	c.cutArmed, c.cutDone = false, false
	c.cutMu.Unlock()
	if cut {
		c.setReadDeadline(clockBase.Add(time.Duration(c.readDeadline())))
	}
	return cut
}
