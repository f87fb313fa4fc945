// The limits of resumable streams (ResumeLimits, the server options) and
// the per-connection replay budget that bounds what the sessions of one
// connection keep for replay (docs/PROTOCOL.md, "Resumable streams";
// resume.go). replayBudget is shared by the handlers of one connection and
// guarded by its own mutex, which is taken last (see resume.go for the
// lock order).

package server

import (
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of ResumeLimits.
const (
	DefaultResumeGrace              = 30 * time.Second
	DefaultResumeStreamBytes        = 1 << 20
	DefaultResumeConnBytes          = 16 << 20
	DefaultResumeParkedPerPrincipal = 100
)

// ResumeLimits bound what resumable streams cost the server. Zero fields
// take the defaults.
type ResumeLimits struct {
	// Grace is how long a stream whose connection was lost waits for its
	// client to re-attach (default 30s). The handler keeps running meanwhile;
	// after it, the handler's context is canceled with aborted.
	Grace time.Duration
	// StreamBytes bounds one stream's replay buffer: the messages sent and
	// not yet acknowledged (default 1 MiB). The handler's Send waits while
	// it is full; a single message larger than it fails with
	// resource_exhausted.
	StreamBytes int
	// ConnBytes bounds the replay buffers of all the resumable streams
	// opened on one connection together, wherever they are attached now
	// (default 16 MiB). Send waits while it is full, except on a stream
	// with nothing buffered: each stream may always hold one message, so
	// that the unread messages of one stream never stall the others.
	ConnBytes int
	// ParkedPerPrincipal bounds the streams of one principal waiting for
	// their client to re-attach (default 100). The stream that would pass
	// it ends at once with resource_exhausted.
	ParkedPerPrincipal int
}

func (l *ResumeLimits) withDefaults() {
	if l.Grace <= 0 {
		l.Grace = DefaultResumeGrace
	}
	if l.StreamBytes <= 0 {
		l.StreamBytes = DefaultResumeStreamBytes
	}
	if l.ConnBytes <= 0 {
		l.ConnBytes = DefaultResumeConnBytes
	}
	if l.ParkedPerPrincipal <= 0 {
		l.ParkedPerPrincipal = DefaultResumeParkedPerPrincipal
	}
}

// WithResumeLimits sets the limits of resumable streams.
func WithResumeLimits(l ResumeLimits) Option {
	return func(c *config) { c.resume = l }
}

// WithoutResumption turns resumable streams off: the server does not
// announce them, and serves a resumable OPEN as a plain stream.
func WithoutResumption() Option {
	return func(c *config) { c.noResume = true }
}

// replayBudget is the replay bytes of the resumable streams opened on one
// connection (ResumeLimits.ConnBytes).
type replayBudget struct {
	mu    sync.Mutex
	used  int
	limit int
	wake  chan struct{} // closed when bytes are given back
}

func newReplayBudget(limit int) *replayBudget {
	return &replayBudget{limit: limit, wake: make(chan struct{})}
}

// lazyBudget is a connection's replay budget, made when its first
// resumable stream needs it: a connection that never opens one (an idle
// one) does not pay for it.
type lazyBudget struct {
	p     atomic.Pointer[replayBudget]
	limit int
}

// get returns the budget, made on first use; any goroutine.
func (l *lazyBudget) get() *replayBudget {
	if b := l.p.Load(); b != nil {
		return b
	}
	l.p.CompareAndSwap(nil, newReplayBudget(l.limit))
	return l.p.Load()
}

// take reserves n bytes, or returns a channel closed when some are given
// back. A stream with nothing buffered (force) always gets its one message,
// so that one stream's unread messages never starve the others.
func (b *replayBudget) take(n int, force bool) (bool, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !force && b.used > 0 && b.used+n > b.limit {
		return false, b.wake
	}
	b.used += n
	return true, nil
}

func (b *replayBudget) give(n int) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	close(b.wake)
	b.wake = make(chan struct{})
	b.mu.Unlock()
}
