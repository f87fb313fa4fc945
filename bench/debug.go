package bench

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"time"
)

// ServeDebug serves a server process's debug endpoint on 127.0.0.1: /stats
// answers stats(r) as JSON, /debug/pprof/ the runtime's profiles and
// /debug/pprof/trace an execution trace (go tool trace), the way to see a
// server child's goroutines wait for each other during a scenario. It
// returns the endpoint's host:port and a function that stops it.
func ServeDebug(stats func(r *http.Request) any) (string, func(), error) {
	ln, err := ListenLoopback("127.0.0.1")
	if err != nil {
		return "", nil, err
	}
	m := http.NewServeMux()
	m.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(stats(r))
	})
	m.HandleFunc("/debug/pprof/", pprof.Index)
	m.HandleFunc("/debug/pprof/profile", pprof.Profile)
	m.HandleFunc("/debug/pprof/trace", pprof.Trace)
	dbg := &http.Server{Handler: m, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = dbg.Serve(ln) }()
	return ln.Addr().String(), func() { _ = dbg.Close() }, nil
}
