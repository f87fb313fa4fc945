package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
)

// Endpoint is one server a Client may dial.
type Endpoint struct {
	// URL is the ws:// or wss:// URL to dial. Its host is the one the
	// server sees in the Host header and, for wss://, the name its
	// certificate is checked against.
	URL string
	// Addr, if set, is the host:port to open the TCP connection to instead
	// of URL's host: an address a resolver found for it. HTTP proxies from
	// the environment are not used for such an endpoint.
	Addr string
}

// A Resolver finds the endpoints of the service a Client dials. The client
// calls Resolve before its first connection attempt, and again each time
// it has tried every endpoint of the last answer without a connection, or
// lost (or was drained from) a connection. An error counts as a failed
// connection attempt: the client backs off and asks again.
type Resolver interface {
	// Resolve returns the endpoints for target, the URL given to New, at
	// least one. The order does not matter: each client starts at a random
	// one and goes round.
	Resolve(ctx context.Context, target string) ([]Endpoint, error)
}

// ResolverFunc is a function that is a Resolver.
type ResolverFunc func(ctx context.Context, target string) ([]Endpoint, error)

// Resolve calls f.
func (f ResolverFunc) Resolve(ctx context.Context, target string) ([]Endpoint, error) {
	return f(ctx, target)
}

// StaticResolver returns a Resolver that answers urls, whatever the target.
func StaticResolver(urls ...string) Resolver {
	eps := make([]Endpoint, len(urls))
	for i, u := range urls {
		eps[i] = Endpoint{URL: u}
	}
	return ResolverFunc(func(context.Context, string) ([]Endpoint, error) {
		if len(eps) == 0 {
			return nil, errors.New("tether: no endpoints")
		}
		return eps, nil
	})
}

// DNSResolver resolves the target URL's host name to its addresses, one
// endpoint each, every time it is asked: a fleet behind a DNS name (a
// Kubernetes headless service) is spread over and followed as replicas
// come and go. Each endpoint keeps the target URL (the Host header and
// TLS name stay the name) and dials one address.
type DNSResolver struct {
	// Resolver looks the name up; nil means net.DefaultResolver.
	Resolver *net.Resolver
	// LookupHost, if set, replaces Resolver (for tests).
	LookupHost func(ctx context.Context, host string) ([]string, error)
}

// Resolve looks target's host up and returns one endpoint per address. An
// IP address is returned as it is.
func (r DNSResolver) Resolve(ctx context.Context, target string) ([]Endpoint, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "80"
		if u.Scheme == "wss" {
			port = "443"
		}
	}
	if net.ParseIP(host) != nil {
		return []Endpoint{{URL: target}}, nil
	}
	lookup := r.LookupHost
	if lookup == nil {
		res := r.Resolver
		if res == nil {
			res = net.DefaultResolver
		}
		lookup = res.LookupHost
	}
	addrs, err := lookup(ctx, host)
	if err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("tether: %s has no addresses", host)
	}
	eps := make([]Endpoint, len(addrs))
	for i, a := range addrs {
		eps[i] = Endpoint{URL: target, Addr: net.JoinHostPort(strings.TrimSuffix(a, "."), port)}
	}
	return eps, nil
}

// WithResolver makes the client dial the endpoints r finds for the URL
// given to New, instead of that URL: it fails over to the next endpoint
// when one refuses or dies, and moves to another when one drains (GOAWAY).
// Only when every endpoint has failed does it back off. The URL given to
// New is then only the target shown in errors and passed to r.
func WithResolver(r Resolver) Option { return func(c *config) { c.resolver = r } }

// WithEndpoints adds more URLs of the same service to the one given to
// New: the client spreads over them (each client starts at a random one)
// and fails over between them, as WithResolver does with a StaticResolver
// of all of them.
func WithEndpoints(urls ...string) Option {
	return func(c *config) { c.endpoints = append(c.endpoints, urls...) }
}

// WithConnections makes the client keep n connections (default 1), each
// managed on its own: with several endpoints they start at consecutive
// ones, so that they land on different servers where there are enough.
// Calls go round-robin over the ready connections; while one reconnects
// (lost, refused, or drained by GOAWAY) calls go on over the others at
// once, without waiting even for a dial. The client's State is ready while
// any connection is.
func WithConnections(n int) Option { return func(c *config) { c.connections = n } }

// endpoint is a resolved Endpoint as the client dials and prints it.
type endpoint struct {
	dialURL string // with credentials
	shown   string // credentials redacted
	addr    string
}

// parseEndpoint checks rawURL as New does and returns it with its
// printable form and the secrets that form hides.
func parseEndpoint(rawURL string) (shown string, secrets []string, err error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Error repeats the URL, credentials and all.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return "", nil, fmt.Errorf("tether: parse URL: %w", err)
	}
	if u.Scheme != "ws" && u.Scheme != "wss" {
		return "", nil, fmt.Errorf("tether: URL scheme must be ws or wss, not %q", u.Scheme)
	}
	if u.User != nil {
		// The WebSocket dialer refuses userinfo (RFC 6455 section 3), and
		// it is a credential: say so without repeating it.
		return "", nil, errors.New("tether: URL must not contain a user name or password; send credentials with WithHandshakeHeader")
	}
	shown, secrets = redactURL(u)
	return shown, secrets, nil
}
