//go:build unix

package mux

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// tcpPair returns both ends of a TCP connection on 127.0.0.1.
func tcpPair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// TestPooledReadsHoldNoBufferWhenDrained: reads through PooledReads return
// the bytes in order, whatever the read sizes, and once every byte read from
// the socket is consumed the connection holds no buffer.
func TestPooledReadsHoldNoBufferWhenDrained(t *testing.T) {
	a, b := tcpPair(t)
	pc := PooledReads(b).(*pooledConn)
	want := make([]byte, 3*pooledReadSize+123)
	for i := range want {
		want[i] = byte(i * 7)
	}
	go func() { _, _ = a.Write(want) }()
	var got []byte
	sizes := []int{1, 10, 125, 2000, pooledReadSize, 9000}
	for i := 0; len(got) < len(want); i++ {
		p := make([]byte, sizes[i%len(sizes)])
		n, err := pc.Read(p)
		if err != nil {
			t.Fatalf("read after %d bytes: %v", len(got), err)
		}
		got = append(got, p[:n]...)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("bytes read differ from bytes written")
	}
	if pc.buf != nil {
		t.Fatalf("drained connection still holds a %d-byte buffer", cap(*pc.buf))
	}

	// A small read takes a buffer; consuming the rest gives it back.
	go func() { _, _ = a.Write([]byte("hello, world")) }()
	p := make([]byte, 5)
	if n, err := io.ReadFull(pc, p); err != nil || string(p[:n]) != "hello" {
		t.Fatalf("read %q, %v", p[:n], err)
	}
	if pc.buf == nil {
		t.Fatal("unread bytes were dropped")
	}
	rest := make([]byte, 7)
	if _, err := io.ReadFull(pc, rest); err != nil || string(rest) != ", world" {
		t.Fatalf("read %q, %v", rest, err)
	}
	if pc.buf != nil {
		t.Fatal("drained connection still holds a buffer")
	}

	// EOF after the peer closes; bytes already read are not skipped by
	// io.Copy (WriteTo).
	go func() { _, _ = a.Write([]byte("tail")); a.Close() }()
	one := make([]byte, 1)
	if _, err := io.ReadFull(pc, one); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, pc); err != nil {
		t.Fatal(err)
	}
	if string(one)+buf.String() != "tail" {
		t.Fatalf("read %q then %q, want \"tail\"", one, buf.String())
	}
}

// TestPooledReadsDeadline: a read deadline ends a waiting read with a
// timeout, as on the TCPConn, and the connection stays usable.
func TestPooledReadsDeadline(t *testing.T) {
	a, b := tcpPair(t)
	pc := PooledReads(b)
	_ = pc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := pc.Read(make([]byte, 10))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past the deadline: %v, want a timeout", err)
	}
	if !strings.HasPrefix(err.Error(), "read tcp") {
		t.Fatalf("error %q does not read as a TCP read error", err)
	}
	_ = pc.SetReadDeadline(time.Time{})
	go func() { _, _ = a.Write([]byte("x")) }()
	p := make([]byte, 10)
	if n, err := pc.Read(p); err != nil || string(p[:n]) != "x" {
		t.Fatalf("read %q, %v after the deadline was cleared", p[:n], err)
	}
	if _, ok := pc.(interface{ CloseWrite() error }); !ok {
		t.Fatal("wrapped connection lost CloseWrite")
	}
}

// TestPooledReadsUnwrapped: connections that are not TCP are returned
// unchanged.
func TestPooledReadsUnwrapped(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if PooledReads(a) != a {
		t.Fatal("net.Pipe connection was wrapped")
	}
}

// TestPooledReadsDoNotAllocate: a read through PooledReads allocates
// nothing (the pooled buffers are reused; no closure per read).
func TestPooledReadsDoNotAllocate(t *testing.T) {
	if raceOn {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	a, b := tcpPair(t)
	pc := PooledReads(b)
	msg := []byte("0123456789")
	p := make([]byte, 64)
	read := func() {
		if _, err := a.Write(msg); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < len(msg); {
			n, err := pc.Read(p)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	}
	read() // warm the pool
	if n := testing.AllocsPerRun(100, read); n > 0 {
		t.Fatalf("%v allocations per read, want 0", n)
	}
}
