//go:build !unix

package mux

import "net"

// PooledReads returns conn unchanged: pooled reads need the poller's raw
// reads of unix systems (pooledread.go).
func PooledReads(conn net.Conn) net.Conn { return conn }
