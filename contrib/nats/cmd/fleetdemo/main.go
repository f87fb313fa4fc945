// Command fleetdemo runs tether's fleet test as a demo: three server
// replicas as separate processes on an embedded three-node NATS cluster,
// behind nginx (or net/http/httputil's ReverseProxy when nginx is not
// installed), restarted one at a time and one SIGKILLed while 50 clients
// make keyed calls and hold server streams. It prints the report and exits
// 1 if a call failed or an effect was applied twice.
//
//	cd contrib/nats                 # a module of its own
//	go run ./cmd/fleetdemo          # short: one round and the kill (about 35 s)
//	go run ./cmd/fleetdemo -full    # two rounds, at least 60 s of held streams
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"time"

	"github.com/tetherrpc/tether/contrib/nats/fleet"
)

func main() {
	fleet.MaybeReplica() // this binary, re-executed as a replica
	full := flag.Bool("full", false, "two rounds of restarts and at least 60 s of held streams")
	clients := flag.Int("clients", 50, "clients, each with a caller and a held stream")
	flag.Parse()
	dir, err := os.MkdirTemp("", "tether-fleet-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	defer os.RemoveAll(dir)
	cfg := fleet.Config{Dir: dir, Clients: *clients, Log: os.Stdout}
	if *full {
		cfg.Steady, cfg.Rounds, cfg.MinDuration = 10*time.Second, 2, 60*time.Second
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	rep, err := fleet.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleetdemo:", err)
		os.Exit(2)
	}
	fmt.Print(rep)
	if !rep.OK() {
		fmt.Println("FAILED: the fleet broke the delivery promise")
		os.Exit(1)
	}
	fmt.Println("OK: no call failed, no effect applied twice")
}
