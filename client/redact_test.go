package client_test

import (
	"testing"

	"github.com/tetherrpc/tether/client"
)

// Issue 10 item 18: the client prints its URL with credentials redacted
// (the end-to-end test is contrib/otel TestURLCredentialsRedacted).
func TestURLRedacted(t *testing.T) {
	for raw, want := range map[string]string{
		"ws://127.0.0.1:1/t": "ws://127.0.0.1:1/t",
		"ws://127.0.0.1:1/t?access_token=abc123&tenant=acme": "ws://127.0.0.1:1/t?access_token=REDACTED&tenant=acme",
		"wss://127.0.0.1:1/t?API_KEY=k-1234&Password=pw99":   "wss://127.0.0.1:1/t?API_KEY=REDACTED&Password=REDACTED",
		"ws://127.0.0.1:1/t?auth=x%20yz&sig=s1g#frag":        "ws://127.0.0.1:1/t?auth=REDACTED&sig=REDACTED",
	} {
		c, err := client.New(raw, client.WithLogger(quietLogger()))
		if err != nil {
			t.Fatal(err)
		}
		if got := c.URL(); got != want {
			t.Errorf("URL() of %s = %s, want %s", raw, got, want)
		}
		c.Close()
	}
}
