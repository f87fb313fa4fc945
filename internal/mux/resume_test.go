package mux

import "testing"

// TestParseResumeCursors: the levels of Tether-Resume-Cursors are
// cumulative: 1 and 2 as announced, a larger number as 2, anything else as
// none.
func TestParseResumeCursors(t *testing.T) {
	for v, want := range map[string]int{"": 0, "0": 0, "1": 1, "2": 2, "3": 2, "-1": 0, "x": 0, "1.5": 0} {
		if got := ParseResumeCursors(v); got != want {
			t.Errorf("ParseResumeCursors(%q) = %d, want %d", v, got, want)
		}
	}
}
