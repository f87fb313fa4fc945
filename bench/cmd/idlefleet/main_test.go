package main

import (
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tetherrpc/tether/bench"
)

// TestMain runs the test binary as a server or client process when the
// driver re-executes it (childEnv), else the tests, checked for leaks.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		main()
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// TestFleetShort runs the driver small: one server, two client processes,
// 60 connections, a second of sampled calls; every connection is held and
// every sampled call answered, and the measures are filled in.
func TestFleetShort(t *testing.T) {
	for _, sys := range []string{bench.Tether, bench.GRPC} {
		t.Run(sys, func(t *testing.T) {
			res, err := run(options{system: sys, servers: 1, conns: 60, clients: 2, hold: time.Second, rate: 50, baseline: 5, baselineTime: 300 * time.Millisecond, settle: 200 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			if res.Held < 60 {
				t.Errorf("servers held %d connections, want 60", res.Held)
			}
			if res.Calls == 0 || res.Errors != 0 {
				t.Errorf("%d sampled calls, %d failed (%s)", res.Calls, res.Errors, res.FirstError)
			}
			if res.RSSPerConn <= 0 && res.HeapPerConn <= 0 || res.GoroutinesPer <= 0 || res.BaselineP99 <= 0 || res.P99 <= 0 {
				t.Errorf("measures missing: %+v", res)
			}
		})
	}
}
