//go:build !unix

package mux

import (
	"bufio"
	"net"
	"net/http"
)

// PooledReads returns conn unchanged: pooled reads need the poller's raw
// reads of unix systems (pooledread.go).
func PooledReads(conn net.Conn) net.Conn { return conn }

// TrackedReads returns conn unchanged, as PooledReads does.
func TrackedReads(conn net.Conn) net.Conn { return conn }

// HijackPooled hijacks w's connection as net/http gives it.
func HijackPooled(w http.ResponseWriter) (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(w).Hijack()
}

// pooledConn never parks here, and no connection is one (PooledReads
// wraps none); it is a net.Conn only for the writer's type switch.
type pooledConn struct{ net.Conn }

func parker(net.Conn) *pooledConn { return nil }

func (*pooledConn) quiet() bool { return false }

func (*pooledConn) waitReadable() error { return nil }

func watchReads(net.Conn, *Conn) bool { return false }
