package client_test

import (
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/tetherrpc/tether/server"
)

// startServer serves srv on 127.0.0.1 and returns its ws:// URL; the server
// and listener close when the test ends.
func startServer(t *testing.T, srv *server.Server) string {
	t.Helper()
	hs := httptest.NewServer(srv)
	t.Cleanup(func() { srv.Close(); hs.Close() })
	return "ws" + strings.TrimPrefix(hs.URL, "http")
}

// quietLogger discards the client's logs.
func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
