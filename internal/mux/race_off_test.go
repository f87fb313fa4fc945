//go:build !race

package mux

// raceOn: the race detector is on; sync.Pool then drops a share of what
// is put back, so allocation counts mean little.
const raceOn = false
