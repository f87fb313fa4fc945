package client_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tetherrpc/tether/client"
)

// TestHandshakeTimeout: a server that accepts the TCP connection and never
// answers the upgrade fails the attempt after WithHandshakeTimeout (the
// dial's context carries it, TCP connect and upgrade together).
func TestHandshakeTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c) // never answered
			mu.Unlock()
		}
	}()
	defer func() {
		ln.Close()
		<-done
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	}()
	c, err := client.New("ws://"+ln.Addr().String()+"/", client.WithLogger(quietLogger()), client.WithHandshakeTimeout(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	for st := c.State(); st != client.StateTransientFailure; st = c.WaitForStateChange(ctx, st) {
		if ctx.Err() != nil {
			t.Fatalf("the attempt did not fail: state %v after %v", st, time.Since(start))
		}
	}
}
