// Package natsembed runs NATS servers with JetStream inside the process,
// on 127.0.0.1 and free ports: one node, or a cluster of several. Tests,
// demos and single-binary setups use it; production points nats.go at an
// external cluster instead. It is a package of its own so that a program
// that only connects to NATS does not link the server.
package natsembed

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// StartTimeout bounds how long Start and StartCluster wait for a node to
// accept connections.
const StartTimeout = 30 * time.Second

// Start runs one node with JetStream, its files under dir.
func Start(dir string) (*server.Server, error) {
	return start(&server.Options{
		ServerName: "tether-nats",
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   dir,
		NoLog:      true,
		NoSigs:     true,
	})
}

func start(opts *server.Options) (*server.Server, error) {
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, err
	}
	s.Start()
	if !s.ReadyForConnections(StartTimeout) {
		s.Shutdown()
		s.WaitForShutdown()
		return nil, fmt.Errorf("natsembed: %s not ready within %v", opts.ServerName, StartTimeout)
	}
	return s, nil
}

// Cluster is several embedded nodes routed to each other.
type Cluster struct {
	Nodes []*server.Server
}

// StartCluster runs n nodes with JetStream (named n1, n2, ...) in one
// cluster, each with its files under dir/<name>, and waits until JetStream
// has a meta leader that has heard from every node, so that a stream or
// bucket with n replicas can be placed when it returns (unless the
// leadership moves meanwhile to a node that has not: a fresh cluster's
// rarely does).
func StartCluster(n int, dir string) (*Cluster, error) {
	// Every node routes to every other, so the cluster ports are chosen
	// first (free ports on 127.0.0.1).
	ports, err := freePorts(n)
	if err != nil {
		return nil, err
	}
	var routes []*url.URL
	for _, p := range ports {
		routes = append(routes, &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", p)})
	}
	c := &Cluster{}
	for j := 1; j <= n; j++ {
		opts := &server.Options{
			ServerName: fmt.Sprintf("n%d", j),
			Host:       "127.0.0.1",
			Port:       server.RANDOM_PORT,
			JetStream:  true,
			StoreDir:   filepath.Join(dir, fmt.Sprintf("n%d", j)),
			NoLog:      true,
			NoSigs:     true,
			Cluster:    server.ClusterOpts{Name: "tether", Host: "127.0.0.1", Port: ports[j-1]},
			Routes:     routes,
		}
		s, err := server.NewServer(opts)
		if err != nil {
			c.Shutdown()
			return nil, err
		}
		s.Start()
		c.Nodes = append(c.Nodes, s)
	}
	for _, s := range c.Nodes {
		if !s.ReadyForConnections(StartTimeout) {
			c.Shutdown()
			return nil, fmt.Errorf("natsembed: %s not ready within %v", s.Name(), StartTimeout)
		}
	}
	deadline := time.Now().Add(StartTimeout)
	for !c.ready() {
		if time.Now().After(deadline) {
			c.Shutdown()
			return nil, errors.New("natsembed: the cluster elected no JetStream meta leader that sees every node")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return c, nil
}

func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
		l.Close()
	}
	return ports, nil
}

// ready reports whether every node is routed to the others, JetStream is
// ready to serve, and the meta leader has every node's statistics. Until a
// node's statistics reach the leader, the leader counts it offline and
// refuses to place replicas on it ("no suitable peers for placement, peer
// offline"): on a loaded machine that takes a while after the election.
func (c *Cluster) ready() bool {
	for _, s := range c.Nodes {
		if s.NumRoutes() < len(c.Nodes)-1 || !s.JetStreamIsCurrent() {
			return false
		}
	}
	l := c.leader()
	return l != nil && len(l.JetStreamClusterPeers()) == len(c.Nodes)
}

func (c *Cluster) leader() *server.Server {
	for _, s := range c.Nodes {
		if s.Running() && s.JetStreamIsLeader() {
			return s
		}
	}
	return nil
}

// URLs returns the client URLs of the nodes still running, comma-separated
// as nats.Connect takes them.
func (c *Cluster) URLs() string {
	var urls []string
	for _, s := range c.Nodes {
		if s.Running() {
			urls = append(urls, s.ClientURL())
		}
	}
	return strings.Join(urls, ",")
}

// Node returns the node with the given server name, or nil.
func (c *Cluster) Node(name string) *server.Server {
	for _, s := range c.Nodes {
		if s.Name() == name {
			return s
		}
	}
	return nil
}

// Shutdown stops every node and waits for each to finish.
func (c *Cluster) Shutdown() {
	for _, s := range c.Nodes {
		s.Shutdown()
	}
	for _, s := range c.Nodes {
		s.WaitForShutdown()
	}
}
