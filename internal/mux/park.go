package mux

// Parking the reader of an idle connection.
//
// A goroutine's stack grows while it handles messages (to 4 or 8 KiB) and
// the runtime does not shrink a blocked one below that, so an idle
// connection's reader, blocked in its read, would hold a grown stack for as
// long as the connection stays idle. Instead, a reader that finds nothing
// to read after a quiet spell (the message it just handled came parkAfter
// or more after the one before) parks: it starts a waiter goroutine and
// ends. The waiter, on a fresh small stack, waits for the socket to become
// readable holding no buffer (pooledConn.waitReadable, under the same read
// deadline the reader would have had) and then runs the reader loop itself.
// Only server connections upgraded through HijackPooled park (the reader
// must see that the WebSocket's read buffer is empty: parker).
//
// All of it runs on the reader goroutine or its waiter, one after the
// other: the fields (lastMsg, quietGap, woke) are theirs.

import "time"

// parkAfter is the quiet spell after which a reader parks once it has
// nothing to read: connections busier than this never park.
const parkAfter = 10 * time.Millisecond

// shouldPark reports whether the reader should park now: the connection
// can park, has just come out of a quiet spell, is open, and no byte it
// has read waits.
func (c *Conn) shouldPark() bool {
	return c.parkConn != nil && c.quietGap && !c.isClosed() && c.lingerUntil.Load() == 0 && c.parkConn.quiet()
}

// noteMessage records the arrival of a message at now.
func (c *Conn) noteMessage(now time.Time) {
	c.quietGap = c.lastMsg.IsZero() || now.Sub(c.lastMsg) >= parkAfter
	c.lastMsg = now
}

// parked is the waiter: it waits until the socket is readable, then runs
// the reader loop. If the wait ended in an error (the read deadline passed,
// the socket closed), the reader reads at once, without renewing the
// deadline or parking, and meets the same error.
func (c *Conn) parked() {
	c.parks.Add(1)
	if err := c.parkConn.waitReadable(); err != nil {
		c.woke = true
	}
	c.quietGap = false // read a message before parking again
	c.readLoop()
}
