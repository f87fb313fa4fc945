package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/tetherrpc/tether/bench"
)

// The server runs in a child process: benchcmp re-executes itself with
// -serve. The child listens on loopback, prints one JSON line (childInfo) on
// stdout, and serves until its stdin is closed. Its debug endpoint, also on
// 127.0.0.1, reports process stats (/stats) and serves net/http/pprof.

type childInfo struct {
	System  string   `json:"system"`
	Targets []string `json:"targets"`
	Debug   string   `json:"debug"` // host:port of the debug endpoint
}

// serveChild is the child's main.
func serveChild(system string, nIPs int) error {
	srv, err := bench.Serve(system, bench.LoopbackIPs(nIPs)...)
	if err != nil {
		return err
	}
	defer srv.Close()

	debugAddr, stop, err := bench.ServeDebug(func(r *http.Request) any {
		return bench.ReadProcStats(r.URL.Query().Get("gc") != "")
	})
	if err != nil {
		return err
	}
	defer stop()

	info := childInfo{System: system, Targets: srv.Targets, Debug: debugAddr}
	if err := json.NewEncoder(os.Stdout).Encode(info); err != nil {
		return err
	}
	// Serve until the parent closes stdin (or exits).
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

// child is a running server child process, seen from the parent.
type child struct {
	childInfo
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

// startChild starts a server of system listening on nIPs loopback addresses.
func startChild(system string, nIPs int) (*child, error) {
	cmd, stdin, stdout, err := startSelf("-serve", system, "-serve-ips", strconv.Itoa(nIPs))
	if err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, stdin: stdin}
	line, err := bufio.NewReader(stdout).ReadBytes('\n')
	if err == nil {
		err = json.Unmarshal(line, &c.childInfo)
	}
	if err != nil {
		c.stop()
		return nil, fmt.Errorf("start %s server: %w", system, err)
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	return c, nil
}

// stop closes the child's stdin and waits for it to exit.
func (c *child) stop() {
	_ = c.stdin.Close()
	done := make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
}

var debugClient = &http.Client{Transport: &http.Transport{Proxy: nil}}

// get fetches a path of the child's debug endpoint.
func (c *child) get(path string, timeout time.Duration) ([]byte, error) {
	u := url.URL{Scheme: "http", Host: c.Debug, Path: path}
	if p, q, ok := strings.Cut(path, "?"); ok {
		u.Path, u.RawQuery = p, q
	}
	cl := *debugClient
	cl.Timeout = timeout
	resp, err := cl.Get(u.String())
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = errors.New(resp.Status)
	}
	return b, err
}

// stats returns the child's process stats, after a GC if gc is set.
func (c *child) stats(gc bool) (bench.ProcStats, error) {
	path := "/stats"
	if gc {
		path += "?gc=1"
	}
	var st bench.ProcStats
	b, err := c.get(path, 30*time.Second)
	if err == nil {
		err = json.Unmarshal(b, &st)
	}
	return st, err
}

// startSelf runs this program again with args, its standard error shared,
// and returns the pipes to its standard input and output.
func startSelf(args ...string) (*exec.Cmd, io.WriteCloser, io.ReadCloser, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, nil, err
	}
	cmd := exec.Command(exe, args...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, nil, nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, nil, err
	}
	return cmd, stdin, stdout, nil
}
