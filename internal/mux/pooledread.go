//go:build unix

package mux

// Pooled reads: an idle connection holds no read buffer.
//
// gorilla/websocket reads through a bufio.Reader of its own, allocated per
// connection and held for the connection's life. PooledReads puts a
// connection under it that borrows a buffer from a shared pool only while
// bytes read from the socket wait to be consumed: it waits for the socket
// to be readable with no buffer (syscall.RawConn.Read, the runtime's
// poller), reads what is there into a pooled buffer, and gives the buffer
// back once gorilla has taken every byte. gorilla's own buffer can then be
// the smallest it accepts (ReadBufferSize). Only the connection's reader
// reads (gorilla allows one reader): its reader goroutine, or a receiver
// that took the reading (callerread_linux.go), one after the other, handed
// over under the poller's mutex or by starting a goroutine, so the fields
// need no lock.

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
)

// pooledReadSize is the size of the pooled buffers; reads asking for at
// least as much go straight to the socket.
const pooledReadSize = 4096

var pooledReadBuffers = sync.Pool{New: func() any { b := make([]byte, pooledReadSize); return &b }}

// PooledReads returns conn wrapped so that it holds a read buffer only
// while read bytes wait to be consumed. Connections it cannot wrap (TLS,
// anything but TCP) are returned as they are.
func PooledReads(conn net.Conn) net.Conn {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return conn
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return conn
	}
	pc := &pooledConn{TCPConn: tc, raw: raw}
	pc.readFn = pc.readSocket // made once: a closure per Read would allocate
	return pc
}

// TrackedReads is PooledReads for the TCP connection of a client's plain
// WebSocket (ws://, no TLS under gorilla/websocket's reads), dialed and not
// yet upgraded: its reads also never go past the end of the handshake's HTTP
// response or of the WebSocket frame being read (frametrack.go), so that the
// reader can see that gorilla's read buffer is empty and can park, as a
// server's does (park.go), and a unary caller can read its own reply
// (callerread_linux.go).
func TrackedReads(conn net.Conn) net.Conn {
	c := PooledReads(conn)
	if pc, ok := c.(*pooledConn); ok {
		pc.track = newFrameTracker()
	}
	return c
}

// pooledConn is a TCP connection whose reads borrow pooled buffers. Every
// other method is the TCPConn's (CloseWrite, deadlines, writes).
type pooledConn struct {
	*net.TCPConn
	raw  syscall.RawConn
	buf  *[]byte // borrowed, holding unread bytes buf[r:w]; nil when none
	r, w int
	br   *bufio.Reader // the WebSocket's read buffer, when HijackPooled made it
	// track follows the frames read, when TrackedReads made the
	// connection: no Read goes past the end of a frame.
	track *frameTracker
	// rerr0 is the error of a read that fill made, returned by the next
	// Read.
	rerr0 error
	// owner is told before every read of the socket (Conn.socketRead),
	// on the reader goroutine; nil until New sets it.
	owner *Conn

	// readSocket's results, and readSocket as a func value.
	readFn func(fd uintptr) bool
	rbp    *[]byte
	rn     int
	rerr   error
}

// parkReadBufferSize is the size of the WebSocket read buffer HijackPooled
// makes: the smallest that gorilla/websocket's Upgrader takes from the
// hijacked connection (more than 256 bytes) when its ReadBufferSize is 0.
const parkReadBufferSize = 257

// HijackPooled hijacks w's connection for a WebSocket upgrade
// (websocket.Upgrader with ReadBufferSize 0, through an http.Hijacker that
// calls it): the connection is wrapped by PooledReads, and its read buffer
// is a small one that the connection knows, so that the reader goroutine
// of an idle connection can park (Conn.park); its reads follow the client's
// frames (frametrack.go), so that a handler can tell a whole message waits
// before it reads one itself (callerread_linux.go). If net/http already buffered
// bytes of the client, its own reader is returned and the upgrader refuses
// the connection, as it would have.
func HijackPooled(w http.ResponseWriter) (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil || brw.Reader.Buffered() > 0 {
		return conn, brw, err
	}
	conn = PooledReads(conn)
	br := bufio.NewReaderSize(conn, parkReadBufferSize)
	if pc, ok := conn.(*pooledConn); ok {
		pc.br = br
		// Its reads stop at each frame's end too, so that a receiver can
		// tell a whole message waits before reading it (readFor).
		pc.track = newServerTracker()
	}
	return conn, bufio.NewReadWriter(br, brw.Writer), nil
}

// parker returns ws's connection if its reader can park: HijackPooled made
// it, or TrackedReads did and its tracker stands at a frame's start after
// the handshake (one that ended its head with bare line feeds, which Go's
// HTTP reader accepts, would leave it lost in the response: tracking stops).
// Nil otherwise.
func parker(conn net.Conn) *pooledConn {
	pc, ok := conn.(*pooledConn)
	switch {
	case !ok:
		return nil
	case pc.br != nil:
		return pc
	case pc.track != nil && pc.track.atFrameStart():
		return pc
	case pc.track != nil:
		pc.track.state = trackOff
	}
	return nil
}

// watchReads makes c the owner of conn if conn is a pooled connection,
// and reports whether it is: c then learns of every read of the socket
// (Conn.socketRead).
func watchReads(conn net.Conn, c *Conn) bool {
	pc, ok := conn.(*pooledConn)
	if ok {
		pc.owner = c
	}
	return ok
}

// quiet reports whether no byte already read waits to be consumed: none in
// the WebSocket's read buffer, none borrowed. Bytes in the socket do not
// count: waitReadable returns at once for them (one system call fewer when
// there are none, the usual case). Reader goroutine only, between messages:
// a tracked connection's reader has then read its bytes to a frame's end,
// and gorilla's buffer holds none (frametrack.go).
func (c *pooledConn) quiet() bool {
	if c.buf != nil || c.rerr0 != nil {
		return false
	}
	if c.br != nil {
		return c.br.Buffered() == 0
	}
	return c.track.atFrameStart()
}

// fill waits, holding no buffer, until the socket has bytes, unless some
// already wait, and reads what is there into a pooled buffer; Read then
// returns those bytes. An error or the end of the stream is kept for Read
// to return, except a passed deadline or a closed socket, which its read
// meets itself. Between messages only, on a tracked connection (the
// caller's read, callerread_linux.go).
func (c *pooledConn) fill() error {
	if c.buf != nil {
		return nil
	}
	if c.rerr0 != nil {
		return c.rerr0
	}
	err := c.raw.Read(c.readFn)
	bp, n, rerr := c.rbp, c.rn, c.rerr
	c.rbp, c.rerr = nil, nil
	if err == nil && rerr == nil && n > 0 {
		c.buf, c.r, c.w = bp, 0, n
		return nil
	}
	if bp != nil {
		pooledReadBuffers.Put(bp)
	}
	if err != nil {
		return err
	}
	c.rerr0 = io.EOF
	if rerr != nil {
		c.rerr0 = c.readError(rerr)
	}
	return c.rerr0
}

// buffered returns the bytes read and not yet consumed.
func (c *pooledConn) buffered() []byte {
	if c.buf == nil {
		return nil
	}
	return (*c.buf)[c.r:c.w]
}

// readError is the error Read returns for rerr, a read system call's.
func (c *pooledConn) readError(rerr error) error {
	return &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", rerr)}
}

// waitReadable waits, holding no buffer, until the socket has bytes (or
// its FIN) to read, or the read deadline passes or the socket closes,
// which it returns as an error.
func (c *pooledConn) waitReadable() error {
	return c.raw.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK)
		return err != syscall.EAGAIN // the socket is non-blocking
	})
}

// Read reads into p: bytes already read first, else at most one read
// system call, waiting (with no buffer held) until the socket is readable.
// Read deadlines apply as to the TCPConn.
func (c *pooledConn) Read(p []byte) (int, error) {
	if c.buf != nil {
		b := (*c.buf)[c.r:c.w]
		if c.track != nil {
			b = b[:c.track.consume(b[:min(len(b), len(p))])]
		}
		n := copy(p, b)
		c.r += n
		if c.r == c.w {
			pooledReadBuffers.Put(c.buf)
			c.buf = nil
		}
		return n, nil
	}
	if len(p) == 0 {
		return 0, nil
	}
	if err := c.rerr0; err != nil {
		if err != io.EOF {
			c.rerr0 = io.EOF // as a second read after a failed one would say
		}
		return 0, err
	}
	if c.owner != nil {
		c.owner.socketRead()
	}
	if len(p) >= pooledReadSize {
		if c.track == nil {
			return c.TCPConn.Read(p)
		}
		if c.track.state == trackPayload {
			// Straight into p, but not past the frame's end.
			n, err := c.TCPConn.Read(p[:min(uint64(len(p)), c.track.rem)])
			c.track.consume(p[:n])
			return n, err
		}
	}
	err := c.raw.Read(c.readFn)
	bp, n, rerr := c.rbp, c.rn, c.rerr
	c.rbp, c.rerr = nil, nil
	empty := err == nil && rerr == nil && n <= 0
	if err == nil && rerr != nil {
		err = c.readError(rerr)
	}
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "raw-read" {
			oe.Op = "read" // as the TCPConn's Read would say (a timeout, a closed socket)
		}
	}
	if err != nil || empty {
		if bp != nil {
			pooledReadBuffers.Put(bp)
		}
		if err == nil {
			err = io.EOF
		}
		return 0, err
	}
	b := (*bp)[:n]
	if c.track != nil {
		b = b[:c.track.consume(b[:min(n, len(p))])]
	}
	m := copy(p, b)
	if m < n {
		c.buf, c.r, c.w = bp, m, n
	} else {
		pooledReadBuffers.Put(bp)
	}
	return m, nil
}

// readSocket is the raw read of Read: one read system call into a pooled
// buffer, or false (the buffer given back) when the socket has nothing, so
// that the poller waits for it with no buffer held. Results in rbp, rn and
// rerr.
func (c *pooledConn) readSocket(fd uintptr) bool {
	bp := pooledReadBuffers.Get().(*[]byte)
	var n int
	var err error
	for {
		n, err = syscall.Read(int(fd), *bp)
		if err != syscall.EINTR {
			break
		}
	}
	if err == syscall.EAGAIN {
		pooledReadBuffers.Put(bp)
		return false
	}
	c.rbp, c.rn, c.rerr = bp, n, err
	return true
}

// WriteTo copies what the connection reads to w through Read, so that
// bytes already read are not skipped (io.Copy would use the TCPConn's
// WriteTo, which reads the socket directly).
func (c *pooledConn) WriteTo(w io.Writer) (int64, error) {
	return io.Copy(w, struct{ io.Reader }{c})
}
