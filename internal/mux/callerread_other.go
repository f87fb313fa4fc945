//go:build !linux

package mux

import "context"

// stepAside reports false: without the shared poller, a client's reader
// reads on (callerread_linux.go).
func (c *Conn) stepAside() bool { return false }

// readFor does nothing: a unary caller waits for its reply on its queue.
func (c *Conn) readFor(*Stream, context.Context) {}

// cutCaller does nothing: no caller reads the connection here.
func (c *Conn) cutCaller() {}

// cutReceiver does nothing: no receiver reads the connection here.
func (c *Conn) cutReceiver(*Stream) {}
