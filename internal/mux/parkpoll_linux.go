package mux

// The shared poller of parked readers (Linux).
//
// A parked reader used to hand its place to a waiter goroutine blocked in
// the runtime's poller until its socket had bytes: one goroutine, its 2 KiB
// stack and its g per idle connection. Instead, the socket is registered
// (EPOLLONESHOT) in one epoll instance of the process, and one goroutine,
// pollLoop, waits on it for every parked connection (through the runtime's
// poller, which watches the epoll descriptor itself) and starts the reader
// of each connection whose socket became readable. pollLoop runs only
// while a connection is parked: it ends within pollIdle of the last one
// leaving.
//
// The poller's state (epfd, conns, running) is guarded by its mu. A parked
// connection is in conns, keyed by its file descriptor, with parkState 1;
// whoever moves parkState from 1 to 0 (unpark: pollLoop, closeWith, the
// heartbeat timer at the read deadline) starts its reader, once. Each
// registration carries a generation in the event's data beside the
// descriptor, so that an event pollLoop read for a connection that closed
// meanwhile does not wake another that reused its descriptor number.

import (
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// pollIdle is how long pollLoop waits for events before it checks whether
// any connection is still parked.
const pollIdle = 100 * time.Millisecond

var poller struct {
	mu      sync.Mutex
	epfd    int // 0: not made yet; -1: epoll unavailable
	conns   map[int32]*Conn
	gen     int32 // the last registration's generation (parkGen)
	ctl     *Conn // the connection parkPolled registers (registerParked)
	ctlErr  error // registerParked's result
	running bool  // pollLoop runs
	// GOMAXPROCS, read again every 1,024 registrations (it takes the
	// scheduler's lock). With one P nothing lends (lendToPoller): no P is
	// ever idle, so a reader goroutine's wake-up never wakes a thread,
	// which is all lending saves.
	procs int
	// The epoll descriptor as a file of the runtime's poller, which
	// tells pollLoop when it has events: pollLoop waits without blocking
	// a thread in epoll_wait (a goroutine blocked in a system call keeps
	// the runtime's monitor waking every 20 µs).
	file *os.File
	raw  syscall.RawConn
}

// parkPolled registers c's socket with the shared poller, which starts c's
// reader when the socket is readable. It reports false if it could not (the
// caller then parks the reader on a waiter goroutine, or lendToPoller's
// caller starts a reader goroutine). Reader goroutine only.
func (c *Conn) parkPolled() bool {
	_, ok := c.pollPark(false)
	return ok
}

// pollPark is parkPolled, and also returns the registration's generation
// (reclaimFromPoller). With lend (lendToPoller), it reports false with one P.
func (c *Conn) pollPark(lend bool) (gen int32, ok bool) {
	pc := c.parkConn
	poller.mu.Lock()
	defer poller.mu.Unlock()
	if poller.epfd == 0 {
		poller.epfd = -1
		poller.conns = make(map[int32]*Conn)
		if fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC); err == nil {
			_ = syscall.SetNonblock(fd, true) // so that os.NewFile hands it to the runtime's poller
			poller.file = os.NewFile(uintptr(fd), "tether-park-epoll")
			if raw, err := poller.file.SyscallConn(); err == nil && poller.file.SetReadDeadline(time.Time{}) == nil {
				poller.epfd, poller.raw = fd, raw
			} else {
				poller.file.Close()
			}
		}
	}
	if poller.epfd < 0 {
		return 0, false
	}
	if poller.gen&1023 == 0 || poller.procs == 0 {
		poller.procs = runtime.GOMAXPROCS(0)
	}
	if lend && poller.procs < 2 {
		return 0, false
	}
	// Registered under mu: the reader that pollLoop starts (after taking
	// mu) sees everything this reader wrote before parking.
	// registerParked is a function of its own, not a closure, and works
	// on the poller's fields: a closure would cost two allocations per
	// park, on every call of a connection that idles between calls.
	poller.ctl = c
	err := pc.raw.Control(registerParked)
	poller.ctl = nil
	if err != nil || poller.ctlErr != nil {
		return 0, false
	}
	c.parkReg = true
	if c.isClosed() {
		// closeWith got here first (it unparks under mu): it found
		// nothing to wake. The waiter meets the close or the linger.
		return 0, false
	}
	poller.conns[c.parkFD] = c
	c.parkState.Store(1)
	if !poller.running {
		poller.running = true
		go pollLoop()
	}
	return c.parkGen, true
}

// registerParked registers the socket fd of poller.ctl with the poller,
// for one readable event, and sets poller.ctlErr. Poller's mu held, inside
// the socket's RawConn.Control (which keeps fd from being closed meanwhile).
func registerParked(fd uintptr) {
	c := poller.ctl
	poller.gen++
	c.parkFD, c.parkGen = int32(fd), poller.gen
	// Fd and Pad are the event's 64 bits of user data.
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT, Fd: int32(fd), Pad: c.parkGen}
	op := syscall.EPOLL_CTL_ADD
	if c.parkReg {
		op = syscall.EPOLL_CTL_MOD
	}
	err := syscall.EpollCtl(poller.epfd, op, int(fd), &ev)
	switch {
	case err == syscall.EEXIST:
		err = syscall.EpollCtl(poller.epfd, syscall.EPOLL_CTL_MOD, int(fd), &ev)
	case err == syscall.ENOENT:
		err = syscall.EpollCtl(poller.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
	}
	poller.ctlErr = err
}

// unpark starts the reader of c if it is parked in the poller, and reports
// whether it did; woke makes the reader read at once, without renewing the
// read deadline or parking (the connection closed, or the deadline
// passed). Any goroutine.
func (c *Conn) unpark(woke bool) bool {
	poller.mu.Lock()
	defer poller.mu.Unlock()
	return c.unparkLocked(woke)
}

func (c *Conn) unparkLocked(woke bool) bool {
	if !c.parkState.CompareAndSwap(1, 0) {
		return false
	}
	if poller.conns[c.parkFD] == c {
		delete(poller.conns, c.parkFD)
	}
	readers.start(readerJob{c: c, woke: woke})
	return true
}

// reclaimFromPoller makes the caller c's reader again if c is still parked in
// the poller by the caller's own lendToPoller, registration gen, and reports
// whether it did: its socket leaves the poller, and the caller reads on. Else
// whoever unparked c started its reader; and if that reader has parked c
// again since (a later registration), the park is not the caller's to take:
// taking it would renew the read deadline with no byte from the peer.
func (c *Conn) reclaimFromPoller(gen int32) bool {
	poller.mu.Lock()
	defer poller.mu.Unlock()
	return c.parkGen == gen && c.unparkTakeLocked()
}

// takeFromPoller makes the caller c's reader if c is parked in the poller,
// and reports whether it did: its socket leaves the poller. A unary caller
// reading its own reply (readFor) takes any park: it renews no deadline.
func (c *Conn) takeFromPoller() bool {
	poller.mu.Lock()
	defer poller.mu.Unlock()
	return c.unparkTakeLocked()
}

// unparkTakeLocked is takeFromPoller with the poller's mu held.
func (c *Conn) unparkTakeLocked() bool {
	if !c.parkState.CompareAndSwap(1, 0) {
		return false
	}
	if poller.conns[c.parkFD] == c {
		delete(poller.conns, c.parkFD)
	}
	poller.ctl = c
	_ = c.parkConn.raw.Control(unregisterParked)
	poller.ctl = nil
	return true
}

// unregisterParked removes the socket fd of poller.ctl from the poller.
// Should that fail, the registration stays: an event it reports finds no
// connection in conns, and the next park modifies it. Poller's mu held.
func unregisterParked(fd uintptr) {
	if syscall.EpollCtl(poller.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil) == nil {
		poller.ctl.parkReg = false
	}
}

// pollLoop waits for the sockets of parked connections and starts their
// readers; it ends once no connection has been parked for pollIdle.
func pollLoop() {
	var evs [128]syscall.EpollEvent
	var n int
	wait := func(fd uintptr) bool {
		var err error
		n, err = syscall.EpollWait(int(fd), evs[:], 0)
		if err != nil {
			n = 0 // EINTR; nothing else is expected
		}
		return n > 0 // else the runtime's poller waits for events
	}
	for {
		_ = poller.file.SetReadDeadline(time.Now().Add(pollIdle))
		if err := poller.raw.Read(wait); err != nil {
			n = 0 // the deadline: see whether any connection is parked
		}
		poller.mu.Lock()
		wakeReady(evs[:n])
		if n == 0 && len(poller.conns) == 0 {
			poller.running = false
			poller.mu.Unlock()
			return
		}
		poller.mu.Unlock()
	}
}

// wakeReady starts the readers of the parked connections whose sockets
// evs report readable. An event of an earlier registration (its
// connection closed after epoll_wait returned, and a new one parked on the
// same descriptor number) wakes nobody. Poller's mu held.
func wakeReady(evs []syscall.EpollEvent) {
	for _, ev := range evs {
		if c := poller.conns[ev.Fd]; c != nil && c.parkGen == ev.Pad {
			c.unparkLocked(false)
		}
	}
}
