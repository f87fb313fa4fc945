package server

// The upgrade-only listener: Serve's own accept loop, used when no other
// HTTP handler shares the port (no WithHTTPHandler, no WithHTTPServer, no
// WithServeTLS). Each accepted connection's goroutine reads one HTTP/1.1
// request (http.ReadRequest, under the read-header timeout and the header
// size limit net/http would apply) and hands it to ServeHTTP with a minimal
// ResponseWriter that can hijack the connection: the same admission,
// authentication, limits and refusals as any other path to ServeHTTP. The
// goroutine becomes nothing: once upgraded, the connection belongs to its
// mux.Conn, and the goroutine (mux.Go: an idle one of an earlier
// connection or reader, whose stack has already grown) waits briefly for
// the next. What net/http does per connection and a WebSocket does not need
// is gone: its connection goroutine and the background read it starts
// before the handler runs (which Hijack must abort and wait for), its
// per-request context, and its read and write buffers (4 KiB each, never
// returned to its pools once hijacked).
//
// A request that is not an upgrade gets ServeHTTP's answer (426), and
// every response other than 101 closes the connection (no keep-alive).
// Shutdown closes the listener and the connections still reading their
// request (none of them has been admitted) and waits for those being
// upgraded; Close closes both at once.

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/tetherrpc/tether/internal/mux"
)

// upgradeListener serves one Server on listeners without net/http's
// server. It has http.Server's Serve, Shutdown and Close.
type upgradeListener struct {
	s                 *Server
	readHeaderTimeout time.Duration
	maxHeaderBytes    int

	mu       sync.Mutex
	lns      map[net.Listener]struct{}
	reading  map[net.Conn]struct{} // connections reading their request
	shutdown bool
	wg       sync.WaitGroup // Serve loops and connection goroutines
}

func newUpgradeListener(s *Server, readHeaderTimeout time.Duration, maxHeaderBytes int) *upgradeListener {
	return &upgradeListener{
		s:                 s,
		readHeaderTimeout: readHeaderTimeout,
		maxHeaderBytes:    maxHeaderBytes,
		lns:               map[net.Listener]struct{}{},
		reading:           map[net.Conn]struct{}{},
	}
}

// Serve accepts connections on ln until Shutdown or Close, which make it
// return http.ErrServerClosed; any other error of Accept that is not
// temporary ends it with that error. It closes ln.
func (u *upgradeListener) Serve(ln net.Listener) error {
	u.mu.Lock()
	if u.shutdown {
		u.mu.Unlock()
		_ = ln.Close()
		return http.ErrServerClosed
	}
	u.lns[ln] = struct{}{}
	u.wg.Add(1)
	u.mu.Unlock()
	defer u.wg.Done()
	defer func() {
		u.mu.Lock()
		delete(u.lns, ln)
		u.mu.Unlock()
		_ = ln.Close()
	}()
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			u.mu.Lock()
			closed := u.shutdown
			u.mu.Unlock()
			if closed {
				return http.ErrServerClosed
			}
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() {
				// As net/http: back off from 5 ms to 1 s and try again
				// (out of file descriptors, for instance).
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				u.s.cfg.logger.Warn("tether accept failed; retrying", "err", err, "delay", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		if !u.track(nc) {
			_ = nc.Close()
			return http.ErrServerClosed
		}
		mux.Go(func() { u.serveConn(nc) })
	}
}

// track registers nc as reading its request, unless shutting down.
func (u *upgradeListener) track(nc net.Conn) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.shutdown {
		return false
	}
	u.reading[nc] = struct{}{}
	u.wg.Add(1)
	return true
}

// handling moves nc from reading to being handled; false if Shutdown or
// Close closed it meanwhile.
func (u *upgradeListener) handling(nc net.Conn) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, ok := u.reading[nc]; !ok {
		return false
	}
	delete(u.reading, nc)
	return true
}

// closeLocked closes the listeners and the connections still reading.
func (u *upgradeListener) closeLocked() {
	u.shutdown = true
	for ln := range u.lns {
		_ = ln.Close()
	}
	for nc := range u.reading {
		_ = nc.Close()
		delete(u.reading, nc)
	}
}

// Shutdown closes the listeners and the connections still reading their
// request, then waits for the upgrades under way (each bounded by the
// handshake timeout) or for ctx.
func (u *upgradeListener) Shutdown(ctx context.Context) error {
	u.mu.Lock()
	u.closeLocked()
	u.mu.Unlock()
	done := make(chan struct{})
	go func() { u.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close closes the listeners and the connections still reading their
// request; the upgrades under way finish on their own (their sockets
// belong to ServeHTTP and the upgrader, which bound them).
func (u *upgradeListener) Close() error {
	u.mu.Lock()
	u.closeLocked()
	u.mu.Unlock()
	return nil
}

// limitedConn is the reader of a connection's request: it counts what the
// request may still read (the header limit, plus net/http's slack).
type limitedConn struct {
	net.Conn
	n int64
}

func (l *limitedConn) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errHeaderTooLarge
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.Conn.Read(p)
	l.n -= int64(n)
	return n, err
}

var errHeaderTooLarge = errors.New("request header too large")

// requestReaders holds the buffered readers that read requests: 4 KiB, as
// net/http's, and back in the pool once the request is read.
var requestReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

// serveConn reads nc's request and serves it.
func (u *upgradeListener) serveConn(nc net.Conn) {
	defer u.wg.Done()
	_ = nc.SetReadDeadline(time.Now().Add(u.readHeaderTimeout))
	// net/http reads up to MaxHeaderBytes plus 4 KiB of slack.
	lc := &limitedConn{Conn: nc, n: int64(u.maxHeaderBytes) + 4096}
	br := requestReaders.Get().(*bufio.Reader)
	br.Reset(lc)
	req, err := http.ReadRequest(br)
	if !u.handling(nc) { // Shutdown or Close closed it
		br.Reset(nil)
		requestReaders.Put(br)
		_ = nc.Close()
		return
	}
	if err != nil {
		br.Reset(nil)
		requestReaders.Put(br)
		u.badRequest(nc, err, lc.n <= 0)
		return
	}
	_ = nc.SetReadDeadline(time.Time{})
	req.RemoteAddr = nc.RemoteAddr().String()
	if tc, ok := nc.(*tls.Conn); ok {
		// A TLS listener given to Serve: an Authenticator may check the
		// client's certificate, as net/http lets it.
		cs := tc.ConnectionState()
		req.TLS = &cs
	}
	w := &upgradeResponse{conn: nc, br: br, header: http.Header{}}
	if !u.serveHTTP(w, req) {
		if !w.hijacked {
			_ = nc.Close()
		}
		return
	}
	if w.hijacked {
		// The upgrader has written the 101 or closed the socket. It kept
		// neither buffer (Hijack gave it a reader of its own unless bytes
		// were buffered; the write buffer served only the 101).
		if !w.brKept {
			br.Reset(nil)
			requestReaders.Put(br)
		}
		return
	}
	br.Reset(nil)
	requestReaders.Put(br)
	w.finish()
}

// serveHTTP runs ServeHTTP and reports whether it returned: a panic (in an
// Authenticator, say) is logged and ends only this connection, as net/http
// recovers a handler's panic.
func (u *upgradeListener) serveHTTP(w *upgradeResponse, r *http.Request) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			u.s.cfg.logger.Error("tether upgrade panicked", "peer", r.RemoteAddr, "panic", fmt.Sprint(p))
		}
	}()
	u.s.ServeHTTP(w, r)
	return true
}

// badRequest answers a request that could not be read, as net/http does:
// 431 for headers over the limit, 400 for a malformed request, nothing for
// a peer that went away or timed out, then closes nc.
func (u *upgradeListener) badRequest(nc net.Conn, err error, tooLarge bool) {
	var ne net.Error
	switch {
	case tooLarge:
		w := &upgradeResponse{conn: nc, header: http.Header{}}
		http.Error(w, "431 Request Header Fields Too Large", http.StatusRequestHeaderFieldsTooLarge)
		w.finish()
		return
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, &ne) && ne.Timeout() || errors.Is(err, net.ErrClosed):
	default:
		w := &upgradeResponse{conn: nc, header: http.Header{}}
		http.Error(w, "400 Bad Request", http.StatusBadRequest)
		w.finish()
		return
	}
	_ = nc.Close()
}

// upgradeResponse is the ResponseWriter of the upgrade-only listener: a
// response other than the 101 is buffered and written, with Connection:
// close, by finish; Hijack hands the connection to the upgrader.
type upgradeResponse struct {
	conn     net.Conn
	br       *bufio.Reader // what read the request; nil for a bad request
	header   http.Header
	status   int
	body     []byte
	hijacked bool
	brKept   bool // br went to the upgrader: not pooled again
}

// Header returns the response's header.
func (w *upgradeResponse) Header() http.Header { return w.header }

// WriteHeader records the status.
func (w *upgradeResponse) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

// Write buffers the body, up to a small bound (these are error answers).
func (w *upgradeResponse) Write(p []byte) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	w.WriteHeader(http.StatusOK)
	if len(w.body) < 4096 {
		w.body = append(w.body, p[:min(len(p), 4096-len(w.body))]...)
	}
	return len(p), nil
}

// Hijack hands the connection to the upgrader, with the reader that read
// the request (mux.HijackPooled, through pooledHijacker, then replaces it
// with the small one the connection keeps) and a writer whose buffer the
// upgrader uses to write the 101.
func (w *upgradeResponse) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked || w.br == nil {
		return nil, nil, http.ErrHijacked
	}
	w.hijacked = true
	br := w.br
	if br.Buffered() == 0 {
		// The pooled reader stays the listener's: gorilla would keep a
		// reader of over 256 bytes as the connection's own (where
		// mux.HijackPooled does not replace it, and on a refusal's
		// upgrade), and serveConn pools it again. One this small it
		// replaces with its own.
		br = bufio.NewReaderSize(w.conn, 16)
	} else {
		// Bytes after the request (gorilla refuses them: RFC 6455 lets
		// no frame come before the 101): whoever keeps the reader, it is
		// not pooled again.
		w.brKept = true
	}
	return w.conn, bufio.NewReadWriter(br, bufio.NewWriterSize(w.conn, 512)), nil
}

// finish writes the buffered response and closes the connection after a
// lingering read, so that what the client still sends does not turn the
// close into a reset that loses the response.
func (w *upgradeResponse) finish() {
	status := w.status
	if status == 0 {
		status = http.StatusOK
	}
	_ = w.conn.SetWriteDeadline(time.Now().Add(time.Second))
	bw := bufio.NewWriterSize(w.conn, 512)
	fmt.Fprintf(bw, "HTTP/1.1 %03d %s\r\n", status, http.StatusText(status))
	w.header.Set("Content-Length", strconv.Itoa(len(w.body)))
	w.header.Set("Connection", "close")
	_ = w.header.Write(bw)
	_, _ = bw.WriteString("\r\n")
	_, _ = bw.Write(w.body)
	_ = bw.Flush()
	if cw, ok := w.conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		_ = w.conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		_, _ = io.Copy(io.Discard, io.LimitReader(w.conn, 256<<10))
	}
	_ = w.conn.Close()
}
