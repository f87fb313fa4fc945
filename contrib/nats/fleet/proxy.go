package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"
)

// proxy is the reverse proxy in front of the replicas.
type proxy struct {
	Kind string // "nginx" or "httputil"
	URL  string // ws:// URL of the tether endpoint
	stop func()
}

// startProxy starts nginx in front of the backends (host:port each) on a
// free 127.0.0.1 port when nginx is installed (or, with CI=true, can be
// installed with apt-get), else net/http/httputil's ReverseProxy.
func startProxy(ctx context.Context, dir string, backends []string, log io.Writer) (*proxy, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	if os.Getenv("TETHER_FLEET_PROXY") == "httputil" {
		return startHTTPUtil(addr, backends)
	}
	if bin := findNginx(log); bin != "" {
		p, err := startNginx(ctx, bin, dir, addr, backends)
		if err == nil {
			return p, nil
		}
		fmt.Fprintf(log, "nginx did not start (%v); using httputil.ReverseProxy\n", err)
	}
	return startHTTPUtil(addr, backends)
}

func findNginx(log io.Writer) string {
	for _, p := range []string{"nginx", "/usr/sbin/nginx"} {
		if bin, err := exec.LookPath(p); err == nil {
			return bin
		}
	}
	if os.Getenv("CI") != "true" {
		return ""
	}
	fmt.Fprintln(log, "nginx is missing; CI=true: apt-get install -y nginx-light")
	cmd := exec.Command("sh", "-c", "(apt-get update -qq && apt-get install -y -qq nginx-light) >/dev/null 2>&1 || apt-get install -y -qq nginx >/dev/null 2>&1")
	if err := cmd.Run(); err != nil {
		return ""
	}
	if bin, err := exec.LookPath("/usr/sbin/nginx"); err == nil {
		return bin
	}
	return ""
}

// NginxConfig is the configuration the fleet test runs nginx with (prefix
// dir, listening on addr, in front of backends). docs/OPERATIONS.md
// explains each setting.
func NginxConfig(dir, addr string, backends []string) string {
	up := ""
	for _, b := range backends {
		up += fmt.Sprintf("    server %s max_fails=0;\n", b)
	}
	return fmt.Sprintf(`daemon off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  map $http_upgrade $connection_upgrade { default upgrade; '' close; }
  upstream tether {
%[3]s  }
  server {
    listen %[2]s;
    location / {
      proxy_pass http://tether;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_buffering off;
      proxy_connect_timeout 2s;
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
      proxy_next_upstream error timeout http_502 http_503;
      proxy_next_upstream_tries 3;
    }
  }
}
`, dir, addr, up)
}

func startNginx(ctx context.Context, bin, dir, addr string, backends []string) (*proxy, error) {
	dir = filepath.Join(dir, "nginx")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(NginxConfig(dir, addr, backends)), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		<-exited
		if b, _ := os.ReadFile(filepath.Join(dir, "error.log")); len(b) > 0 && os.Getenv("TETHER_FLEET_NGINX_LOG") != "" {
			fmt.Fprintf(os.Stderr, "nginx error log:\n%s", b)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return &proxy{Kind: "nginx", URL: "ws://" + addr + "/rpc", stop: stop}, nil
		}
		select {
		case err := <-exited:
			b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			return nil, fmt.Errorf("nginx exited: %v: %s", err, b)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			stop()
			return nil, errors.New("nginx does not listen")
		}
	}
}

// startHTTPUtil is the fallback proxy: round robin over the backends, and
// like nginx's proxy_next_upstream, a refused connection or a 502/503 (a
// draining replica refuses upgrades with 503) moves the request to the next
// backend.
func startHTTPUtil(addr string, backends []string) (*proxy, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	rt := &nextUpstream{backends: backends, base: http.DefaultTransport.(*http.Transport).Clone()}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(&url.URL{Scheme: "http", Host: "upstream"})
			r.Out.Host = r.In.Host
			r.SetXForwarded()
		},
		Transport: rt,
	}
	hs := &http.Server{Handler: rp, ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(ln)
	stop := func() {
		hs.Close()
		rt.base.CloseIdleConnections()
	}
	return &proxy{Kind: "httputil.ReverseProxy", URL: "ws://" + addr + "/rpc", stop: stop}, nil
}

type nextUpstream struct {
	backends []string
	base     *http.Transport
	n        atomic.Int64
}

func (t *nextUpstream) RoundTrip(r *http.Request) (*http.Response, error) {
	first := int(t.n.Add(1))
	var res *http.Response
	var err error
	for i := range len(t.backends) {
		out := r.Clone(r.Context())
		out.URL.Host = t.backends[(first+i)%len(t.backends)]
		res, err = t.base.RoundTrip(out)
		if err == nil && res.StatusCode != http.StatusBadGateway && res.StatusCode != http.StatusServiceUnavailable {
			return res, nil
		}
		if err == nil && i < len(t.backends)-1 {
			res.Body.Close()
		}
	}
	return res, err
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
