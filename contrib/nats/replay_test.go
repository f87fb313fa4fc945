package tethernats_test

import (
	"context"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether/client"
	tethernats "github.com/tetherrpc/tether/contrib/nats"
	"github.com/tetherrpc/tether/dlq"
	"github.com/tetherrpc/tether/examples/ledger"
	ledgerv1 "github.com/tetherrpc/tether/gen/example/ledger/v1"
	"github.com/tetherrpc/tether/server"
)

// A call runs on replica A, its answer is cut, and every retry finds no
// replica (the proxy sends later connections to a dead address): the client
// parks it in its dead-letter queue on JetStream. Another client process
// (a new container) replays it from that queue against replica B, which
// answers from the shared idempotency store: the handler ran once.
func TestDeadLetterReplayLandsOnAnotherReplica(t *testing.T) {
	_, js := connect(t, startNode(t))
	bucket := bucketName()
	book := ledger.NewBook()
	var a *replica
	ha := &cutting{Handler: ledger.Handler{Book: book}, srv: func() *server.Server { return a.srv }}
	hb := &counting{Handler: ledger.Handler{Book: book}}
	a = startReplica(t, js, bucket, ha)
	b := startReplica(t, js, bucket, hb)

	dead := httptest.NewServer(nil)
	deadURL, _ := url.Parse(dead.URL)
	dead.Close()
	aURL, _ := url.Parse(a.hs.URL)
	var conns atomic.Int64
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		if conns.Add(1) == 1 {
			r.SetURL(aURL)
		} else {
			r.SetURL(deadURL)
		}
	}, ErrorLog: log.New(io.Discard, "", 0)}
	lb := httptest.NewServer(rp)
	defer lb.Close()

	dlqBucket := bucketName()
	letters, err := tethernats.NewDLQ(bg, js, tethernats.WithDLQBucket(dlqBucket))
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New("ws"+strings.TrimPrefix(lb.URL, "http"), client.WithDeadLetterQueue(letters))
	if err != nil {
		t.Fatal(err)
	}
	// The retries wait for a connection until the call's deadline.
	ctx, cancel := context.WithTimeout(bg, 3*time.Second)
	defer cancel()
	_, err = ledgerv1.NewLedgerServiceClient(c).Credit(ctx, &ledgerv1.CreditRequest{Account: "acct", Amount: 9}, client.WithIdempotencyKey("pay-3"))
	if !errors.Is(err, client.ErrDeadLettered) {
		t.Fatalf("call: %v, want dead-lettered", err)
	}
	c.Close()
	letters.Close()
	if book.Applied("pay-3") != 1 {
		t.Fatalf("applied %d times before the replay", book.Applied("pay-3"))
	}

	// A new client process: the queue is in JetStream, not on its disk.
	letters, err = tethernats.NewDLQ(bg, js, tethernats.WithDLQBucket(dlqBucket))
	if err != nil {
		t.Fatal(err)
	}
	defer letters.Close()
	es, err := letters.List(bg, dlq.ListOptions{})
	if err != nil || len(es) != 1 || es[0].IdempotencyKey != "pay-3" {
		t.Fatalf("queue: %v, %v", es, err)
	}
	rc, err := client.New("ws" + strings.TrimPrefix(b.hs.URL, "http"))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	rctx, rcancel := context.WithTimeout(bg, time.Minute)
	defer rcancel()
	raw, err := dlq.Replay(rctx, letters, rc, es[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	var res ledgerv1.CreditResponse
	if err := proto.Unmarshal(raw, &res); err != nil {
		t.Fatal(err)
	}
	if res.GetBalance() != 9 || book.Applied("pay-3") != 1 || hb.runs.Load() != 0 {
		t.Fatalf("after the replay on B: balance %d, applied %d times, B ran %d times", res.GetBalance(), book.Applied("pay-3"), hb.runs.Load())
	}
}
