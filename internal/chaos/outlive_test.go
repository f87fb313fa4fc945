package chaos

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	chaosv1 "github.com/tetherrpc/tether/gen/tether/testing/chaos/v1"
)

// A Credit handler of a server that was closed (Server.Close does not
// wait for handlers) applies its effect after the next server started:
// the effect is its own server's, marked late, and the repeat the next
// server runs for the same key (its cache is new) is a rerun in that
// server, which the checker does not count against either cache. Before
// effects carried their ledger's epoch, the late effect was stamped with
// the new server's and the checker saw two runs in one cache (the two
// violations of seed 3141592653, issue 15's fourteenth pass).
func TestHandlerOutlivesItsServer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "effects.log")
	log, err := OpenEffectLog(path)
	if err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	free := func() { releaseOnce.Do(func() { close(release) }) }
	defer free() // a failure below must not leave the handler held (goleak)
	old := &Ledger{Log: log, Epoch: 1, hold: func() { close(entered); <-release }}
	addr1, stop1 := serveLedger(t, old)
	cli1 := ledgerClient(t, addr1)

	const key = "outlive-1"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	first := make(chan error, 1)
	go func() {
		_, err := cli1.Credit(ctx, &chaosv1.CreditRequest{Account: "a", Amount: 5}, client.WithIdempotencyKey(key), client.WithoutRetries())
		first <- err
	}()
	select {
	case <-entered:
	case err := <-first:
		t.Fatalf("the call ended before its handler was held: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the handler was not reached within 10 s")
	}
	log.Stopped(1) // as inprocServer.stop: from here its handlers are late
	stop1()
	if err := <-first; tether.CodeOf(err) != tether.CodeUnavailable {
		t.Fatalf("the call to the closed server ended with %v, want unavailable", err)
	}

	addr2, stop2 := serveLedger(t, &Ledger{Log: log, Epoch: 2})
	cli2 := ledgerClient(t, addr2)
	if _, err := cli2.Credit(ctx, &chaosv1.CreditRequest{Account: "a", Amount: 5}, client.WithIdempotencyKey(key)); err != nil {
		t.Fatal(err)
	}
	free() // the old handler applies now, after the new server did
	var effects []Effect
	waitFor(t, func() bool { // the log's lines are written unbuffered
		effects, err = ReadEffects(path)
		return err != nil || len(effects) >= 2
	})
	if err != nil {
		t.Fatal(err)
	}
	stop2()
	if err := log.Close(); err != nil {
		t.Fatal(err)
	}
	if effects, err = ReadEffects(path); err != nil {
		t.Fatal(err)
	}
	want := []Effect{
		{Kind: EffectApply, Method: MethodCredit, Key: key, Principal: "p0", Epoch: 2, Amount: 5},
		{Kind: EffectRerun, Method: MethodCredit, Key: key, Principal: "p0", Epoch: 1, Amount: 5, Late: true},
	}
	if len(effects) != len(want) {
		t.Fatalf("effects: %+v\nwant %+v", effects, want)
	}
	for i := range want {
		if effects[i] != want[i] {
			t.Fatalf("effect %d: %+v, want %+v", i, effects[i], want[i])
		}
	}
	ops := []Op{
		{Method: MethodCredit, Key: key, Client: "c0", Result: ResultFail},
		{Method: MethodCredit, Key: key, Client: "c0", Result: ResultOK},
	}
	if v := Check(CheckConfig{NoEviction: true}, ops, nil, effects); len(v) != 0 {
		t.Fatalf("violations: %v", v)
	}
}

// serveLedger serves ledger on a fresh 127.0.0.1 port until stop, which
// closes the server as TestChaos's kill does (Close, not Shutdown).
func serveLedger(t *testing.T, ledger *Ledger) (addr string, stop func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(ledger, 0, discard())
	hs := &http.Server{Handler: srv}
	go func() { _ = hs.Serve(ln) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			_ = hs.Close()
			_ = srv.Close()
		})
	}
	t.Cleanup(stop) // a failure before the test stops it leaves no server (goleak)
	return ln.Addr().String(), stop
}

func ledgerClient(t *testing.T, addr string) chaosv1.ChaosLedgerServiceClient {
	t.Helper()
	c, err := client.New("ws://"+addr, client.WithLogger(discard()),
		client.WithHandshakeHeader(http.Header{"Authorization": {"Bearer " + Token("p0")}}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return chaosv1.NewChaosLedgerServiceClient(c)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10 s")
		}
	}
}
