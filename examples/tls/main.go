// Command tls serves the echo example over wss:// with a self-signed
// certificate made in memory, calls it once, and exits:
//
//	go run ./examples/tls
//
// It shows the pieces a TLS deployment needs: a certificate for the address
// clients dial, a server started with Server.Serve and server.WithServeTLS
// (an http.Server with safe timeouts, ReadHeaderTimeout first: it bounds the
// TLS handshake and the upgrade request, which tether's own handshake
// timeout does not cover; and a graceful drain when its context ends), and
// a client that trusts the certificate through client.WithTLSConfig.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"log"
	"log/slog"
	"math/big"
	"net"
	"os"
	"time"

	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

func main() {
	if err := run(); err != nil {
		log.Printf("tls example: %v", err)
		os.Exit(1)
	}
}

// selfSigned returns a certificate for 127.0.0.1, valid for a day, signed
// by its own ECDSA P-256 key, and a pool that trusts it.
func selfSigned() (tls.Certificate, *x509.CertPool, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "tether example"},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool, nil
}

func run() error {
	cert, pool, err := selfSigned()
	if err != nil {
		return fmt.Errorf("certificate: %w", err)
	}

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv := server.New(server.WithLogger(logger))
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})

	ln, err := net.Listen("tcp", "127.0.0.1:0") // a free port
	if err != nil {
		return err
	}
	// Serve until serveCtx ends, then drain: GOAWAY to clients, calls in
	// flight finish (up to server.DefaultShutdownGrace), connections close.
	serveCtx, stopServing := context.WithCancel(context.Background())
	defer stopServing()
	served := make(chan error, 1)
	go func() {
		served <- srv.Serve(serveCtx, ln, server.WithServeTLS(&tls.Config{
			Certificates: []tls.Certificate{cert},
			MinVersion:   tls.VersionTLS12,
		}))
	}()

	url := "wss://" + ln.Addr().String()
	cli, err := client.New(url,
		client.WithTLSConfig(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}),
		client.WithLogger(logger))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := echov1.NewEchoServiceClient(cli).Say(ctx, &echov1.SayRequest{Text: "hello over TLS"})
	if err != nil {
		_ = cli.Close()
		return fmt.Errorf("call %s: %w", url, err)
	}
	fmt.Printf("server at %s answered: %q\n", url, res.GetText())

	_ = cli.Close()
	stopServing()
	if err := <-served; err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}
