package client

import "testing"

// TestWithWindowGrowth: the option sets the mux's bounds on window growth,
// per stream and per connection (their behaviour is tested in
// internal/mux: TestWindowGrowthBoundedPerConnection).
func TestWithWindowGrowth(t *testing.T) {
	var c config
	WithWindowGrowth(512<<10, 1<<20)(&c)
	if c.mux.MaxStreamWindow != 512<<10 || c.mux.MaxWindowGrowth != 1<<20 {
		t.Fatalf("MaxStreamWindow %d, MaxWindowGrowth %d; want %d, %d", c.mux.MaxStreamWindow, c.mux.MaxWindowGrowth, 512<<10, 1<<20)
	}
}
