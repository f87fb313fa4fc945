// Package health serves tether.health.v1, tether's health-checking
// service (shaped like grpc.health.v1): Check answers a service's status
// once, Watch streams its changes. It also serves an HTTP readiness
// endpoint for load balancers and orchestrators that probe over plain HTTP:
// 200 while SERVING, 503 otherwise.
//
// Register adds it to a server in one call and ties it to the server's
// drain: when Server.Shutdown (or Serve's graceful drain) begins, every
// status flips to NOT_SERVING before any GOAWAY is sent, so that probes
// take the replica out of rotation while its calls finish.
package health

import (
	"context"
	"net/http"
	"sync"

	"github.com/tetherrpc/tether"
	healthv1 "github.com/tetherrpc/tether/gen/tether/health/v1"
	"github.com/tetherrpc/tether/server"
)

// Status is a service's serving status.
type Status = healthv1.HealthCheckResponse_ServingStatus

// The statuses, as in grpc.health.v1.
const (
	Unknown        = healthv1.HealthCheckResponse_UNKNOWN
	Serving        = healthv1.HealthCheckResponse_SERVING
	NotServing     = healthv1.HealthCheckResponse_NOT_SERVING
	ServiceUnknown = healthv1.HealthCheckResponse_SERVICE_UNKNOWN
)

// Server implements tether.health.v1.HealthService. The whole server's
// status is the service "" and starts SERVING; other services are unknown
// until SetServingStatus names them. Its methods are safe for concurrent
// use.
type Server struct {
	healthv1.UnimplementedHealthServiceHandler

	mu       sync.Mutex
	statuses map[string]Status
	changed  chan struct{} // closed and replaced on every change
	shutdown bool
}

var _ healthv1.HealthServiceHandler = (*Server)(nil)

// New returns a health server whose overall status ("") is SERVING.
func New() *Server {
	return &Server{statuses: map[string]Status{"": Serving}, changed: make(chan struct{})}
}

// Register serves a new health server on s and returns it: s's drain
// (Server.Shutdown, Close, or Serve when its context ends) calls its
// Shutdown first, before any GOAWAY.
func Register(s *server.Server, opts ...server.HandlerOption) *Server {
	h := New()
	healthv1.RegisterHealthServiceHandler(s, h, opts...)
	s.OnDrain(h.Shutdown)
	return h
}

// SetServingStatus sets service's status ("" is the whole server) and
// tells its watchers. After Shutdown it is ignored until Resume.
func (h *Server) SetServingStatus(service string, st Status) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.shutdown {
		return
	}
	h.setLocked(service, st)
}

func (h *Server) setLocked(service string, st Status) {
	if old, ok := h.statuses[service]; ok && old == st {
		return
	}
	h.statuses[service] = st
	close(h.changed)
	h.changed = make(chan struct{})
}

// Shutdown sets every status to NOT_SERVING and ignores SetServingStatus
// until Resume: the server is draining.
func (h *Server) Shutdown() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.shutdown = true
	for service := range h.statuses {
		h.setLocked(service, NotServing)
	}
}

// Resume undoes Shutdown: every status becomes SERVING again.
func (h *Server) Resume() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.shutdown = false
	for service := range h.statuses {
		h.setLocked(service, Serving)
	}
}

// Status returns service's status and whether the server knows service.
func (h *Server) Status(service string) (Status, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	st, ok := h.statuses[service]
	return st, ok
}

// Check answers the status of req's service; not_found for a service the
// server does not know.
func (h *Server) Check(_ context.Context, req *healthv1.HealthCheckRequest) (*healthv1.HealthCheckResponse, error) {
	st, ok := h.Status(req.GetService())
	if !ok {
		return nil, tether.Errorf(tether.CodeNotFound, "tether: unknown service %q", req.GetService())
	}
	return &healthv1.HealthCheckResponse{Status: st}, nil
}

// Watch sends req's service's status at once (SERVICE_UNKNOWN for a
// service the server does not know), then each change, until the caller
// cancels or the server shuts the health server down: then it sends
// NOT_SERVING and ends the stream with unavailable, so that a watch never
// holds a drain open. Changes in quick succession may be folded into the
// last one.
func (h *Server) Watch(ctx context.Context, req *healthv1.HealthCheckRequest, stream *server.ServerStream[healthv1.HealthCheckResponse]) error {
	sent := Status(-1)
	for {
		h.mu.Lock()
		st, ok := h.statuses[req.GetService()]
		ch, shutdown := h.changed, h.shutdown
		h.mu.Unlock()
		if !ok {
			st = ServiceUnknown
		}
		if st != sent {
			if err := stream.Send(&healthv1.HealthCheckResponse{Status: st}); err != nil {
				return err
			}
			sent = st
		}
		if shutdown {
			// A watch must not hold the server's drain open: it ends
			// after NOT_SERVING, and the caller watches elsewhere.
			return tether.Errorf(tether.CodeUnavailable, "tether: server is draining")
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// ReadinessHandler returns an HTTP handler for load balancer and
// Kubernetes readiness probes of service ("" for the whole server): 200
// "SERVING" while it is SERVING, 503 with the status otherwise (404 for a
// service the server does not know). Mount it next to the tether Server
// (server.WithHTTPHandler), for example on /readyz.
func (h *Server) ReadinessHandler(service string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st, ok := h.Status(service)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		switch {
		case !ok:
			w.WriteHeader(http.StatusNotFound)
		case st == Serving:
			w.WriteHeader(http.StatusOK)
		default:
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		if r.Method != http.MethodHead {
			_, _ = w.Write([]byte(st.String() + "\n"))
		}
	})
}
