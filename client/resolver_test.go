package client_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tetherrpc/tether/client"
)

func TestDNSResolver(t *testing.T) {
	res := client.DNSResolver{LookupHost: func(_ context.Context, name string) ([]string, error) {
		return []string{"10.0.0.1", "fd00::1"}, nil
	}}
	eps, err := res.Resolve(context.Background(), "wss://fleet.example/rpc")
	if err != nil {
		t.Fatal(err)
	}
	want := []client.Endpoint{{URL: "wss://fleet.example/rpc", Addr: "10.0.0.1:443"}, {URL: "wss://fleet.example/rpc", Addr: "[fd00::1]:443"}}
	if len(eps) != 2 || eps[0] != want[0] || eps[1] != want[1] {
		t.Fatalf("Resolve = %+v, want %+v", eps, want)
	}
	eps, err = res.Resolve(context.Background(), "ws://127.0.0.1:9/x")
	if err != nil || len(eps) != 1 || eps[0] != (client.Endpoint{URL: "ws://127.0.0.1:9/x"}) {
		t.Fatalf("an IP target: %+v, %v", eps, err)
	}
}

func TestEndpointsValidated(t *testing.T) {
	if _, err := client.New("ws://127.0.0.1:1", client.WithEndpoints("http://127.0.0.1:2")); err == nil {
		t.Fatal("New accepted an http:// endpoint")
	}
	if _, err := client.New("ws://127.0.0.1:1", client.WithEndpoints("ws://u:p@127.0.0.1:2")); err == nil {
		t.Fatal("New accepted an endpoint with userinfo")
	}
	if _, err := client.New("ws://127.0.0.1:1", client.WithEndpoints("ws://127.0.0.1:2"), client.WithResolver(client.StaticResolver("ws://127.0.0.1:3"))); err == nil {
		t.Fatal("New accepted WithEndpoints and WithResolver together")
	}
}

// TestEndpointCredentialsRedacted: the error of a failed endpoint names it
// with its credentials redacted.
func TestEndpointCredentialsRedacted(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // refuses from now on
	failures := make(chan error, 16)
	c, err := client.New("ws://"+addr+"/?access_token=firstsecret", client.WithLogger(quietLogger()),
		client.WithEndpoints("ws://"+addr+"/?access_token=secondsecret"),
		client.WithStateListener(func(s client.State, err error) {
			if s == client.StateTransientFailure {
				select {
				case failures <- err:
				default:
				}
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case err = <-failures:
	case <-time.After(30 * time.Second):
		t.Fatal("no transient failure with both endpoints refusing")
	}
	msg := err.Error()
	if strings.Contains(msg, "firstsecret") || strings.Contains(msg, "secondsecret") || !strings.Contains(msg, "REDACTED") {
		t.Fatalf("error %q: want the endpoint with its token REDACTED", msg)
	}
	t.Log(msg)
}
