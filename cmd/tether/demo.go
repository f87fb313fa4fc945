package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/dlq"
	"github.com/tetherrpc/tether/dlq/dlqbolt"
	"github.com/tetherrpc/tether/examples/echo"
	"github.com/tetherrpc/tether/examples/ledger"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	ledgerv1 "github.com/tetherrpc/tether/gen/example/ledger/v1"
	"github.com/tetherrpc/tether/internal/faultproxy"
	"github.com/tetherrpc/tether/server"
	"github.com/tetherrpc/tether/server/idempotency"
)

// runDemo starts the example services and a client on loopback and shows
// every kind of call, a dropped connection and a dead-lettered call being
// replayed. It exits non-zero if anything does not behave as shown.
func runDemo(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "web" {
		return runDemoWeb(args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	storePath := fs.String("store", "", "dead-letter queue file (default: a temporary file)")
	verbose := fs.Bool("v", false, "log connection events")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: tether demo [-store path] [-v]\n       tether demo web [-addr host:port]\n\nRuns the example services and a client on 127.0.0.1 and shows unary,\nserver-streaming, client-streaming and bidi calls, a dropped connection,\nand a dead-lettered call replayed from the durable queue.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if *storePath == "" {
		dir, err := os.MkdirTemp("", "tether-demo-")
		if err != nil {
			fmt.Fprintln(stderr, "demo:", err)
			return exitFailure
		}
		defer os.RemoveAll(dir)
		*storePath = filepath.Join(dir, "dlq.db")
	}
	d := &demo{out: stdout, logger: logger, storePath: *storePath}
	if err := d.run(); err != nil {
		fmt.Fprintf(stderr, "\ndemo FAILED: %v\n", err)
		return exitFailure
	}
	fmt.Fprintln(stdout, "\ndemo finished: every step behaved as expected")
	return exitOK
}

type demo struct {
	out       io.Writer
	logger    *slog.Logger
	storePath string
	step      int
	lastState client.State
}

func (d *demo) say(format string, args ...any) { fmt.Fprintf(d.out, "    "+format+"\n", args...) }

func (d *demo) heading(title string) {
	d.step++
	fmt.Fprintf(d.out, "\n%d. %s\n", d.step, title)
}

func (d *demo) run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// Server: both example services; the ledger deduplicates by idempotency key.
	book := ledger.NewBook()
	srv := server.New(server.WithLogger(d.logger), server.WithInterceptors(idempotency.New()))
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	ledgerv1.RegisterLedgerServiceHandler(srv, &ledger.Handler{Book: book})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	// Serve with safe timeouts until the demo ends, then drain gracefully.
	serveCtx, stopServing := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(serveCtx, ln, server.WithShutdownGrace(5*time.Second)) }()
	defer func() {
		stopServing()
		<-served
	}()

	// A fault proxy between client and server, to drop the connection.
	proxy, err := faultproxy.New(ln.Addr().String())
	if err != nil {
		return err
	}
	defer proxy.Close()

	store, err := dlqbolt.Open(d.storePath)
	if err != nil {
		return err
	}
	defer store.Close()
	url := "ws://" + proxy.Addr()
	cli, err := client.New(url,
		client.WithLogger(d.logger),
		client.WithDeadLetterQueue(store),
		client.WithHeartbeat(500*time.Millisecond, time.Second),
		client.WithBackoff(client.BackoffConfig{Initial: 100 * time.Millisecond, Max: time.Second}),
		client.WithStateListener(func(s client.State, err error) {
			if (s == client.StateReady || s == client.StateTransientFailure) && s != d.lastState {
				d.say("[connection] %s", s)
			}
			d.lastState = s
		}))
	if err != nil {
		return err
	}
	defer cli.Close()
	echoCli := echov1.NewEchoServiceClient(cli)
	ledgerCli := ledgerv1.NewLedgerServiceClient(cli)
	fmt.Fprintf(d.out, "server on ws://%s, client dialing %s through a fault proxy\ndead-letter queue: %s\n", ln.Addr(), url, d.storePath)

	d.heading("Unary: EchoService.Say")
	res, err := echoCli.Say(ctx, &echov1.SayRequest{Text: "hello, tether"})
	if err != nil {
		return err
	}
	d.say("Say(%q) -> %q", "hello, tether", res.GetText())

	d.heading("Server streaming: EchoService.Countdown")
	cd, err := echoCli.Countdown(ctx, &echov1.CountdownRequest{Count: 5})
	if err != nil {
		return err
	}
	var values []uint32
	for {
		m, err := cd.Receive()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		values = append(values, m.GetValue())
	}
	d.say("Countdown(5) -> %v", values)

	d.heading("Client streaming: EchoService.Collect")
	col, err := echoCli.Collect(ctx)
	if err != nil {
		return err
	}
	for _, w := range []string{"one", "socket,", "many", "calls"} {
		if err := col.Send(&echov1.CollectRequest{Text: w}); err != nil {
			return err
		}
	}
	joined, err := col.CloseAndReceive()
	if err != nil {
		return err
	}
	d.say("Collect(4 messages) -> %q", joined.GetJoined())

	d.heading("Bidi streaming: EchoService.Chat")
	chat, err := echoCli.Chat(ctx)
	if err != nil {
		return err
	}
	for _, w := range []string{"ping", "are you there?", "bye"} {
		if err := chat.Send(&echov1.ChatRequest{Text: w}); err != nil {
			return err
		}
		m, err := chat.Receive()
		if err != nil {
			return err
		}
		d.say("sent %q, got %q", w, m.GetText())
	}
	_ = chat.CloseSend()
	if _, err := chat.Receive(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("chat did not end cleanly: %v", err)
	}

	d.heading("Dropped connection: idempotent calls ride through a cut")
	before := cli.Stats().Connects
	for i := range 10 {
		if i == 4 {
			proxy.CutAll()
			d.say("proxy cut every connection (RST) after call 4")
		}
		if _, err := ledgerCli.Record(ctx, &ledgerv1.RecordRequest{Id: fmt.Sprintf("rec-%d", i), Account: "demo", Amount: 10}); err != nil {
			return fmt.Errorf("Record %d: %w", i, err)
		}
	}
	bal, err := ledgerCli.Balance(ctx, &ledgerv1.BalanceRequest{Account: "demo"})
	if err != nil {
		return err
	}
	d.say("10 Record calls succeeded; server holds %d records, balance %d; client reconnected %d time(s)", bal.GetRecords(), bal.GetBalance(), cli.Stats().Connects-before)
	if bal.GetRecords() != 10 {
		return fmt.Errorf("server holds %d records, want 10", bal.GetRecords())
	}

	d.heading("Dead letter: a credit that cannot be delivered is parked, then replayed")
	proxy.Refuse(true)
	proxy.CutAll()
	d.say("server unreachable (proxy refuses connections)")
	cctx, ccancel := context.WithTimeout(ctx, time.Second)
	_, err = ledgerCli.Credit(cctx, &ledgerv1.CreditRequest{Account: "demo", Amount: 5})
	ccancel()
	var dl *client.DeadLetterError
	if !errors.As(err, &dl) {
		return fmt.Errorf("credit during the outage: %v, want a dead-lettered call", err)
	}
	d.say("Credit(5) -> %v", err)
	entries, err := store.List(ctx, dlq.ListOptions{})
	if err != nil {
		return err
	}
	for _, e := range entries {
		d.say("queue: id=%s procedure=%s attempts=%d last=%s key=%s", e.ID, e.Procedure, e.Attempts, tether.Code(e.LastCode), e.IdempotencyKey)
	}
	proxy.Refuse(false)
	d.say("server reachable again; replaying with the original idempotency key")
	if _, err := dlq.Replay(ctx, store, cli, dl.ID); err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	// A second replay of the same call must not apply it twice.
	if _, err := cli.InvokeRaw(ctx, entries[0].Procedure, entries[0].Request, entries[0].Metadata); err != nil {
		return fmt.Errorf("repeat: %w", err)
	}
	bal, err = ledgerCli.Balance(ctx, &ledgerv1.BalanceRequest{Account: "demo"})
	if err != nil {
		return err
	}
	n, _ := store.Len(ctx)
	d.say("replayed twice, applied %d time(s): balance %d (credits %d); %d entries left in the queue", book.Applied(entries[0].IdempotencyKey), bal.GetBalance(), bal.GetCredits(), n)
	if bal.GetCredits() != 1 || n != 0 {
		return fmt.Errorf("credit applied %d times with %d entries left; want once and none", bal.GetCredits(), n)
	}
	return nil
}
