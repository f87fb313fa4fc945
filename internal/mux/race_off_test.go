//go:build !race

package mux

// raceEnabled: the race detector is on.
const raceEnabled = false
