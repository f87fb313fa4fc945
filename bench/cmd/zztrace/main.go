// Scratch: unary c=1 against a server child, with a runtime trace of the client.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime/trace"
	"slices"
	"time"

	"github.com/tetherrpc/tether/bench"
	benchv1 "github.com/tetherrpc/tether/bench/gen/bench/v1"
)

func main() {
	target := flag.String("target", "", "")
	sys := flag.String("sys", "tether", "")
	out := flag.String("trace", "", "")
	d := flag.Duration("d", 2*time.Second, "")
	flag.Parse()
	ctx := context.Background()
	c, err := bench.Dial(ctx, *sys, *target, false)
	if err != nil {
		panic(err)
	}
	req := &benchv1.Payload{Body: make([]byte, 16)}
	for range 2000 {
		c.Unary(ctx, req)
	}
	if *out != "" {
		f, _ := os.Create(*out)
		trace.Start(f)
		defer trace.Stop()
	}
	var lat []time.Duration
	end := time.Now().Add(*d)
	for time.Now().Before(end) {
		t0 := time.Now()
		if _, err := c.Unary(ctx, req); err != nil {
			panic(err)
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	fmt.Printf("%s: %d calls p50 %v p99 %v\n", *sys, len(lat), lat[len(lat)/2], lat[len(lat)*99/100])
}
