package server

// Draining and closing: OnDrain, Shutdown, Close and the connections' age limit.

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/tetherrpc/tether/internal/mux"
)

// OnDrain registers f to run once when the server begins to drain
// (Shutdown, Close, or Serve when its context ends), before any GOAWAY is
// sent: health.Register uses it to report NOT_SERVING first.
func (s *Server) OnDrain(f func()) {
	s.mu.Lock()
	ran := s.drainRan
	if !ran {
		s.onDrain = append(s.onDrain, f)
	}
	s.mu.Unlock()
	if ran {
		f()
	}
}

// beginDrain runs the OnDrain functions, once.
func (s *Server) beginDrain() {
	s.mu.Lock()
	fs := s.onDrain
	s.onDrain, s.drainRan = nil, true
	s.mu.Unlock()
	for _, f := range fs {
		f()
	}
}

// Shutdown drains the server gracefully: the OnDrain functions run first
// (a registered health service reports NOT_SERVING), new connections are
// refused with 503, every connection gets GOAWAY so clients open new calls elsewhere,
// calls in flight run to completion, then connections close. If ctx ends
// first, the remaining connections are closed and ctx's error returned.
// The server's http.Server, if any, is shut down separately.
func (s *Server) Shutdown(ctx context.Context) error {
	conns := s.startDrain(ctx, "server is shutting down")
	var wg sync.WaitGroup
	errs := make(chan error, len(conns))
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- c.Shutdown(ctx)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return s.wait(ctx)
}

// Close closes every connection at once; calls in flight fail with
// unavailable and their handlers' contexts are canceled. It waits for the
// connections' own goroutines (readers, writers) to end, not for the
// handlers: a handler that does not watch its context may still run, and
// finish its work, after Close returns (as with net/http's Server.Close and
// grpc-go's Stop without WaitForHandlers). Shutdown waits for the calls.
func (s *Server) Close() error {
	conns := s.startDrain(closedCtx, "server closed")
	for _, c := range conns {
		c.CloseGoingAway()
	}
	return s.wait(context.Background())
}

func (s *Server) wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ageOut drains conn, which reached the maximum connection age: GOAWAY,
// then it waits for its calls for up to the grace (WithMaxConnectionAge).
func (s *Server) ageOut(conn *mux.Conn) {
	s.mu.Lock()
	if _, open := s.conns[conn]; !open || s.draining {
		s.mu.Unlock()
		return // closed, or Shutdown drains it
	}
	// conn holds a count in wg until its OnClose, so this Add cannot race
	// a Wait that has seen zero.
	s.wg.Add(1)
	s.counters.aged.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.Background(), context.CancelFunc(func() {})
		if g := s.cfg.maxConnAgeGrace; g > 0 {
			ctx, cancel = context.WithTimeout(ctx, g)
		}
		defer cancel()
		_ = conn.Shutdown(ctx)
	}()
}

// jitter returns d changed by a random share of up to
// MaxConnectionAgeJitter, either way.
func jitter(d time.Duration) time.Duration {
	f := 1 + MaxConnectionAgeJitter*(2*rand.Float64()-1)
	return time.Duration(float64(d) * f)
}

// startDrain begins draining (Shutdown with ctx, Close with closedCtx):
// the OnDrain functions run, resumable streams waiting for their client end
// with why (streams attached to a connection run on as it drains), new
// connections are refused, and the open ones are returned.
func (s *Server) startDrain(ctx context.Context, why string) []*mux.Conn {
	s.beginDrain()
	if s.resume != nil {
		s.resume.close(notResumed("%s", why))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.draining = true
	s.drainCtx = ctx
	conns := make([]*mux.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	return conns
}
