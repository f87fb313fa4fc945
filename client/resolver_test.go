package client_test

import (
	"context"
	"testing"

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
