package mux

// Parking the reader of an idle connection.
//
// A goroutine's stack grows while it handles messages (to 4 or 8 KiB) and
// the runtime does not shrink a blocked one below that, so an idle
// connection's reader, blocked in its read, would hold a grown stack for as
// long as the connection stays idle. Instead, a reader that finds nothing
// to read after a quiet spell (the message it just handled came parkAfter
// or more after the one before) parks and ends (or, having handed off,
// runs a lone stream's Accept: reader.go's handOff). On Linux its socket joins
// the process's shared poller (parkpoll_linux.go): no goroutine at all
// while it is parked; when the socket is readable the poller starts a new
// reader goroutine (unparked), on a fresh small stack; closeWith starts it
// when the connection closes, and the heartbeat timer when the read
// deadline passes (heartbeat.go), so that a parked reader meets the same
// deadline and close as a blocked one. Elsewhere, or if the poller cannot
// take the socket, the reader starts a waiter goroutine instead, which on a
// fresh small stack waits for the socket to become readable holding no
// buffer (pooledConn.waitReadable, under the same read deadline the reader
// would have had) and then runs the reader loop itself.
// Only server connections park (upgraded through HijackPooled: the reader
// must see that the WebSocket's read buffer is empty, parker); a client's
// reader, dialed through TrackedReads, steps aside into the same poller for
// calls made one after another instead, and a reader of either side for a
// receiver waiting for the next of a stream's messages answered one at a
// time (callerread_linux.go).
//
// All of it runs on the reader goroutine or its waiter, one after the
// other, or on a receiver that took the reading (callerread_linux.go):
// the fields (lastMsg, quietGap, woke, parkFD, parkReg) are theirs (the
// poller's mutex orders a parked reader before the one it starts, or before
// the caller that takes its socket, and workers.start a reader that hands
// off before the one that reads on); parkState is atomic.
//
// A reader that runs a lone stream's Accept (reader.go's handOff) on a
// connection whose last message did the same, calls one at a time, lends its
// socket to the shared poller for as long as Accept runs (lendToPoller;
// unless another connection lent in the last lendApart, or GOMAXPROCS is 1),
// without the quiet spell: it takes the socket back afterwards
// (reclaimFromPoller) unless bytes came and the poller started a reader
// meanwhile.

import (
	"sync/atomic"
	"time"
)

// parkAfter is the quiet spell after which a reader parks once it has
// nothing to read: connections busier than this never park.
const parkAfter = 10 * time.Millisecond

// shouldPark reports whether the reader should park now: the connection is
// a server's that can park, has just come out of a quiet spell, is open,
// and no byte it has read waits. A client's reader does not park after a
// quiet spell (a client holds few connections, and with 10,000 of them in a
// push fleet's client each call paid for the park: client CPU per call 9.5%
// higher in 4 of 4 pairs); it steps aside for calls made one after another
// (callerread_linux.go).
func (c *Conn) shouldPark() bool {
	return c.role == RoleServer && c.parkConn != nil && c.quietGap && !c.isClosed() && c.lingerUntil.Load() == 0 && c.parkConn.quiet()
}

// noteMessage records the arrival of a message at now.
func (c *Conn) noteMessage(now time.Time) {
	t := nanotime(now) // the monotonic clock: lendApart compares it across connections
	c.quietGap = c.lastMsg == 0 || time.Duration(t-c.lastMsg) >= parkAfter
	c.lastMsg = t
}

// park parks the reader, which returns afterwards: in the shared poller
// where there is one (parkpoll_linux.go: no goroutine while parked), else
// on a waiter goroutine.
func (c *Conn) park() {
	c.parks.Add(1)
	if !c.parkPolled() {
		go c.parked()
	}
}

// unparked runs the reader loop of a connection the shared poller held,
// on a new goroutine started by unpark.
func (c *Conn) unparked(woke bool) {
	c.woke = woke
	c.quietGap = false // read a message before parking again
	c.readLoop()
}

// parked is the waiter: it waits until the socket is readable, then runs
// the reader loop. If the wait ended in an error (the read deadline passed,
// the socket closed), the reader reads at once, without renewing the
// deadline or parking, and meets the same error.
func (c *Conn) parked() {
	if err := c.parkConn.waitReadable(); err != nil {
		c.woke = true
	}
	c.quietGap = false // read a message before parking again
	c.readLoop()
}

// lendApart: a connection lends only if no other one of its role lent less
// than lendApart before (lendGates). Many connections that each make a call at
// a time keep the Ps busy: waking a reader goroutine then wakes no thread,
// and the lend's two epoll_ctl calls (under the poller's lock) would be the
// dearer (64 such server connections: 1.4 to 14% fewer calls/s when every
// lone call lent). Times are nanotime's (the monotonic clock), so that a step
// of the wall clock does not stop lending. Servers lend for a lone Accept
// (lendToPoller), either side for a receiver that reads for itself
// (callerread_linux.go's stepAside and handBack); a process that serves and
// calls gates each apart.
const lendApart = 100 * time.Microsecond

var (
	lendIDs   atomic.Uint64 // the last lendID given
	lendGates [2]struct {   // by Role
		lender atomic.Uint64 // the lendID of the last to lend
		at     atomic.Int64  // when the message it lent after came
	}
)

// lendToPoller parks the reader in the shared poller while the reader
// goroutine runs a lone stream's Accept (handOff), instead of waking another
// goroutine to read on: if bytes arrive meanwhile, the poller starts a reader
// as for a parked connection; if none do, reclaimFromPoller takes the reading
// back once Accept returns, given the registration's generation lendToPoller
// returns. It reports false, and handOff starts a reader goroutine, where the
// connection cannot park in the poller, where a stream that another OPEN of
// the same message started runs beside the lone one, where another
// connection lent less than lendApart ago, or with GOMAXPROCS 1 (pollPark).
// Reader goroutine only.
func (c *Conn) lendToPoller() (gen int32, ok bool) {
	if c.parkConn == nil || c.isClosed() || c.lingerUntil.Load() != 0 || !c.parkConn.quiet() {
		return 0, false
	}
	if !c.mayLend() {
		return 0, false
	}
	c.mu.Lock()
	alone := c.running == 1
	c.mu.Unlock()
	if !alone {
		return 0, false
	}
	// Read before the socket is lent: from then on the reader's fields may
	// be the next reader's.
	id, at := c.lendID, c.lastMsg
	c.touched = true // handOff renewed the read deadline: the next reader reads at once
	if gen, ok = c.pollPark(true); ok {
		c.lent(id, at) // only a lend that happened holds the others back
	}
	return gen, ok
}

// mayLend reports whether no other connection of c's role lent its socket
// less than lendApart before the message c's reader last read. Reader only.
func (c *Conn) mayLend() bool {
	if c.lendID == 0 {
		c.lendID = lendIDs.Add(1)
	}
	g := &lendGates[c.role]
	return g.lender.Load() == c.lendID || c.lastMsg-g.at.Load() >= int64(lendApart)
}

// lent records that connection id, of c's role, lent its socket after the
// message that came at at (nanotime). Any goroutine: it reads only c.role.
func (c *Conn) lent(id uint64, at int64) {
	g := &lendGates[c.role]
	g.lender.Store(id)
	g.at.Store(at)
}
