package chaos

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// Server-side fault kinds, drawn by the scheduler.
const (
	FaultCut     = "cut"     // every proxied connection closed with RST
	FaultCutOne  = "cut-one" // one proxied connection closed with RST
	FaultStall   = "stall"   // the proxy stops forwarding for a while, sockets open
	FaultRestart = "restart" // graceful: Shutdown, then a new server on the same port
	FaultKill    = "kill"    // abrupt: SIGKILL of the server process (or Close in process), then a new one
	FaultHostile = "hostile" // a raw WebSocket peer sends oversized or malformed frames to the server
)

// Event is one scheduled fault.
type Event struct {
	At   time.Duration // from the start of the run
	Kind string
	// For stalls, how long; for restarts and kills, how long the server
	// stays down.
	For time.Duration
	// Variant selects the hostile peer's attack, or the connection cut.
	Variant int
}

// String describes the event in one line, for the printed schedule.
func (e Event) String() string {
	s := fmt.Sprintf("t=%-8v %s", e.At.Round(time.Millisecond), e.Kind)
	switch e.Kind {
	case FaultStall:
		s += fmt.Sprintf(" for %v", e.For)
	case FaultRestart, FaultKill:
		s += fmt.Sprintf(" down %v", e.For)
	case FaultCutOne:
		s += fmt.Sprintf(" #%d", e.Variant)
	case FaultHostile:
		s += " " + HostileAttacks[e.Variant%len(HostileAttacks)]
	}
	return s
}

// Schedule draws the faults of a run from its seed: one about every 250 ms
// on average, over d. disabled names kinds, or hostile attacks, to leave
// out.
func Schedule(seed uint64, d time.Duration, disabled map[string]bool) []Event {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	kinds := []weighted{{FaultCut, 15}, {FaultCutOne, 15}, {FaultStall, 15}, {FaultRestart, 10}, {FaultKill, 10}, {FaultHostile, 25}}
	total := 0
	for _, k := range kinds {
		if !disabled[k.v] {
			total += k.w
		}
	}
	var out []Event
	at := time.Duration(0)
	for total > 0 {
		at += time.Duration(50+r.IntN(400)) * time.Millisecond
		if at >= d {
			break
		}
		n := r.IntN(total)
		e := Event{At: at}
		for _, k := range kinds {
			if disabled[k.v] {
				continue
			}
			if n < k.w {
				e.Kind = k.v
				break
			}
			n -= k.w
		}
		switch e.Kind {
		case FaultStall:
			e.For = time.Duration(100+r.IntN(700)) * time.Millisecond
		case FaultRestart, FaultKill:
			e.For = time.Duration(r.IntN(300)) * time.Millisecond
		case FaultCutOne:
			e.Variant = r.IntN(16)
		case FaultHostile:
			e.Variant = r.IntN(len(HostileAttacks))
			for i := 0; i < len(HostileAttacks) && disabled[HostileAttacks[e.Variant]]; i++ {
				e.Variant = (e.Variant + 1) % len(HostileAttacks)
			}
			if disabled[HostileAttacks[e.Variant]] {
				e.Kind = FaultCut
			}
		}
		out = append(out, e)
	}
	return out
}

// FormatSchedule prints a schedule, one event a line.
func FormatSchedule(evs []Event) string {
	var b strings.Builder
	for _, e := range evs {
		b.WriteString("  ")
		b.WriteString(e.String())
		b.WriteByte('\n')
	}
	return b.String()
}
