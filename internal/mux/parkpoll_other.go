//go:build !linux

package mux

// parkPolled reports false: without epoll, a parked reader waits on a
// waiter goroutine (park.go).
func (c *Conn) parkPolled() bool { return false }

// unpark reports false: no reader is parked in a poller here.
func (c *Conn) unpark(bool) bool { return false }

// pollPark reports false: without epoll, nothing parks in a poller here.
func (c *Conn) pollPark(bool) (int32, bool) { return 0, false }

// reclaimFromPoller reports false: nothing is parked in a poller here.
func (c *Conn) reclaimFromPoller(int32) bool { return false }
