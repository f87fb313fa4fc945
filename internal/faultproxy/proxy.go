// Package faultproxy is a TCP proxy on loopback for fault tests: it forwards
// connections to a target and can stall them (a silent, half-open peer), cut
// them abruptly, or refuse new ones, all on real sockets.
package faultproxy

import (
	"errors"
	"io"
	"net"
	"sort"
	"sync"
	"time"
)

// Proxy forwards TCP connections from its loopback address to a target.
type Proxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	inbound map[net.Conn]uint64 // accepted connections, by accept order
	accepts uint64
	stalled bool
	refuse  bool
	resume  chan struct{}
	closed  bool
	wg      sync.WaitGroup
}

// New starts a proxy on 127.0.0.1 with a free port, forwarding to target
// (which must be a loopback address).
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}, inbound: map[net.Conn]uint64{}, resume: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's address, "127.0.0.1:port".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Stall stops forwarding bytes in both directions while keeping every socket
// open: to each side the other has gone silent, with no FIN or RST.
func (p *Proxy) Stall() {
	p.mu.Lock()
	p.stalled = true
	p.mu.Unlock()
}

// Resume forwards again after Stall.
func (p *Proxy) Resume() {
	p.mu.Lock()
	if p.stalled {
		p.stalled = false
		close(p.resume)
		p.resume = make(chan struct{})
	}
	p.mu.Unlock()
}

// SetTarget makes new connections go to target (a loopback address): a
// server that restarted elsewhere, or another replica. Open connections
// keep theirs.
func (p *Proxy) SetTarget(target string) {
	p.mu.Lock()
	p.target = target
	p.mu.Unlock()
}

// Refuse makes the proxy close new connections at once (a server that is
// down); Refuse(false) accepts them again.
func (p *Proxy) Refuse(on bool) {
	p.mu.Lock()
	p.refuse = on
	p.mu.Unlock()
}

// CutAll closes every proxied connection abruptly, with RST.
func (p *Proxy) CutAll() {
	p.mu.Lock()
	conns := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = c.Close()
	}
}

// CutOne closes one proxied connection abruptly, with RST: the i-th (modulo
// their number) of the open ones in the order they were accepted. It
// reports whether there was one to cut.
func (p *Proxy) CutOne(i int) bool {
	p.mu.Lock()
	var victim net.Conn
	if n := len(p.inbound); n > 0 {
		conns := make([]net.Conn, 0, n)
		for c := range p.inbound {
			conns = append(conns, c)
		}
		sort.Slice(conns, func(a, b int) bool { return p.inbound[conns[a]] < p.inbound[conns[b]] })
		victim = conns[(i%n+n)%n]
	}
	p.mu.Unlock()
	if victim == nil {
		return false
	}
	if tc, ok := victim.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = victim.Close()
	return true
}

// Close stops the proxy, closes every connection and waits for its
// goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	err := p.ln.Close()
	p.Resume()
	p.CutAll()
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refuse, closed, target := p.refuse, p.closed, p.target
		p.mu.Unlock()
		if refuse || closed {
			_ = in.Close()
			continue
		}
		out, err := net.DialTimeout("tcp", target, 5*time.Second)
		if err != nil {
			_ = in.Close()
			continue
		}
		if !p.track(in, out) {
			continue
		}
		p.mu.Lock()
		p.accepts++
		p.inbound[in] = p.accepts
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(in, out)
		go p.pipe(out, in)
	}
}

func (p *Proxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		for _, c := range conns {
			_ = c.Close()
		}
		return false
	}
	for _, c := range conns {
		p.conns[c] = struct{}{}
	}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.inbound, c)
	p.mu.Unlock()
}

// pipe copies src to dst, holding data while the proxy is stalled.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	defer func() {
		_ = src.Close()
		_ = dst.Close()
		p.untrack(src)
		p.untrack(dst)
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			for {
				p.mu.Lock()
				stalled, resume, closed := p.stalled, p.resume, p.closed
				p.mu.Unlock()
				if closed {
					return
				}
				if !stalled {
					break
				}
				<-resume
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if tc, ok := dst.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
			}
			return
		}
	}
}
