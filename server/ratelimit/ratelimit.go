// Package ratelimit is a server interceptor that limits the rate of calls
// per connection and per authenticated principal, with token buckets from
// golang.org/x/time/rate. A call over a limit fails with resource_exhausted
// before its handler runs; the connection stays up.
package ratelimit

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/principal"
	"github.com/tetherrpc/tether/server"
)

// Limits are the rates, in calls per second, and bursts. A zero rate means
// no limit at that level.
type Limits struct {
	PerConnection   rate.Limit
	ConnectionBurst int
	PerPrincipal    rate.Limit
	PrincipalBurst  int
}

// Default limits: 1,000 calls/s per connection (burst 2,000) and 5,000
// calls/s per principal (burst 10,000).
var Default = Limits{PerConnection: 1000, ConnectionBurst: 2000, PerPrincipal: 5000, PrincipalBurst: 10000}

// Interceptor enforces Limits. Create it with New.
//
// Principals share a bucket when they name the same caller by the rules
// server.Identity documents (a string, a PrincipalKey method, or the value
// a pointer points to, with its type; a String method is not used, as it
// is often a display name several callers share), so an Authenticator that
// returns a fresh *User for every connection still limits the user, not the
// connection. A principal without a stable key is limited by its value in
// this process.
type Interceptor struct {
	limits Limits
	idle   time.Duration

	mu         sync.Mutex
	conns      map[uint64]*bucket
	principals map[string]*bucket
	calls      int
}

type bucket struct {
	lim  *rate.Limiter
	seen time.Time
}

// New returns an interceptor enforcing l. Buckets idle for 5 minutes are
// forgotten, so memory follows the active connections and principals.
func New(l Limits) *Interceptor {
	return &Interceptor{limits: l, idle: 5 * time.Minute, conns: map[uint64]*bucket{}, principals: map[string]*bucket{}}
}

// allow takes one token from the caller's connection bucket and principal
// bucket.
func (i *Interceptor) allow(ctx context.Context) error {
	ci, ok := server.CallInfoFromContext(ctx)
	if !ok {
		return nil
	}
	peer := ci.Peer()
	var scope string
	if i.limits.PerPrincipal > 0 && peer.Principal != nil {
		// Outside the lock: a principal without a PrincipalKey method is
		// printed (see server.Identity), which takes microseconds.
		scope = principal.Identity(peer.Principal)
	}
	now := time.Now()
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.calls++; i.calls%1024 == 0 {
		i.sweep(now)
	}
	if i.limits.PerConnection > 0 {
		b := i.conns[peer.ConnID]
		if b == nil {
			b = &bucket{lim: rate.NewLimiter(i.limits.PerConnection, max(1, i.limits.ConnectionBurst))}
			i.conns[peer.ConnID] = b
		}
		b.seen = now
		if !b.lim.AllowN(now, 1) {
			return tether.Errorf(tether.CodeResourceExhausted, "rate limit: more than %g calls/s on this connection", float64(i.limits.PerConnection))
		}
	}
	if i.limits.PerPrincipal > 0 && peer.Principal != nil {
		b := i.principals[scope]
		if b == nil {
			b = &bucket{lim: rate.NewLimiter(i.limits.PerPrincipal, max(1, i.limits.PrincipalBurst))}
			i.principals[scope] = b
		}
		b.seen = now
		if !b.lim.AllowN(now, 1) {
			return tether.Errorf(tether.CodeResourceExhausted, "rate limit: more than %g calls/s for this principal", float64(i.limits.PerPrincipal))
		}
	}
	return nil
}

func (i *Interceptor) sweep(now time.Time) {
	for k, b := range i.conns {
		if now.Sub(b.seen) > i.idle {
			delete(i.conns, k)
		}
	}
	for k, b := range i.principals {
		if now.Sub(b.seen) > i.idle {
			delete(i.principals, k)
		}
	}
}

// WrapUnary implements server.Interceptor.
func (i *Interceptor) WrapUnary(next server.UnaryFunc) server.UnaryFunc {
	return func(ctx context.Context, req proto.Message) (proto.Message, error) {
		if err := i.allow(ctx); err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
}

// WrapStream implements server.Interceptor: opening a stream counts as one
// call.
func (i *Interceptor) WrapStream(next server.StreamFunc) server.StreamFunc {
	return func(ctx context.Context, st server.Stream) error {
		if err := i.allow(ctx); err != nil {
			return err
		}
		return next(ctx, st)
	}
}

var _ server.Interceptor = (*Interceptor)(nil)
