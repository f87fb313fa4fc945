package tethernats_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/clientconn"
	"github.com/tetherrpc/tether/contrib/nats/natsembed"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// ledgerChat is the echo service's Chat as a method marked
// option (tether.v1.resume_from_cursor) = true; generated code declares
// such a Method (with Spec.ResumeFromCursor) for a marked method.
var ledgerChat = &clientconn.Method{Spec: tether.Spec{
	Procedure:        echov1.EchoServiceChatProcedure,
	StreamType:       tether.StreamTypeBidi,
	ResumeFromCursor: true,
}, Resumable: true}

// creditLedger serves Chat as a running balance: each request is an amount,
// credited by appending it to the JetStream stream LEDGER, and answered
// with the balance, whose cursor is the number of requests applied and the
// balance. A run that continues a session another replica served
// (server.ResumeCursor) starts from there.
type creditLedger struct {
	name string
	js   jetstream.JetStream
	runs chan<- string // the replica and where each run starts
}

func (l *creditLedger) chat(ctx context.Context, stream *server.BidiStream[echov1.ChatRequest, echov1.ChatResponse]) error {
	var n, balance uint64
	if cursor, ok := server.ResumeCursor(ctx); ok {
		// The client's claim: check it like any request field.
		if r, _ := server.ResumeRequests(ctx); len(cursor) != 16 || binary.BigEndian.Uint64(cursor) != r {
			return tether.Errorf(tether.CodeInvalidArgument, "ledger: bad cursor")
		}
		n, balance = binary.BigEndian.Uint64(cursor), binary.BigEndian.Uint64(cursor[8:])
	}
	l.runs <- fmt.Sprintf("%s after %d requests", l.name, n)
	for {
		req, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		n++
		amount, err := strconv.ParseUint(req.GetText(), 10, 64)
		if err != nil {
			return tether.Errorf(tether.CodeInvalidArgument, "ledger: amount %q", req.GetText())
		}
		// Applied once: JetStream drops a message whose id it has seen,
		// so a run that receives again a request an earlier run applied
		// after its last cursor does not credit it twice. (A real service
		// puts its session's id in the message id.)
		if _, err := l.js.Publish(ctx, "ledger.credits", []byte(req.GetText()), jetstream.WithMsgID("credit-"+strconv.FormatUint(n, 10))); err != nil {
			return err
		}
		balance += amount
		// The credit is durable: the cursor covers this request.
		cursor := binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, n), balance)
		if err := stream.SendWithCursor(&echov1.ChatResponse{Text: strconv.FormatUint(balance, 10)}, cursor); err != nil {
			return err
		}
	}
}

// A bidi session backed by a JetStream stream moves to another replica when
// the one serving it goes away: the handler credits each request to the
// stream and attaches the number of requests applied (and the balance) as
// its cursor; the other replica runs the handler again from the cursor of
// the last response the client read, and receives the requests after it.
// Every credit is applied once, and the client never sees the switch.
func Example_resumableLedger() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "tether-ledger")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ns, err := natsembed.Start(dir)
	if err != nil {
		log.Fatal(err)
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	nc, err := nats.Connect(ns.ClientURL(), nats.MaxReconnects(-1))
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	ls, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "LEDGER", Subjects: []string{"ledger.credits"}})
	if err != nil {
		log.Fatal(err)
	}

	// Two replicas of the ledger service.
	runs := make(chan string, 4)
	replicas := map[string]func(){}
	var urls []string
	for _, name := range []string{"a", "b"} {
		srv := server.New()
		srv.Register(server.NewBidiStreamHandler(ledgerChat.Spec, (&creditLedger{name: name, js: js, runs: runs}).chat))
		hs := httptest.NewServer(srv)
		var once sync.Once
		stop := func() { once.Do(func() { srv.Close(); hs.Close() }) }
		defer stop()
		replicas[name] = stop
		urls = append(urls, "ws"+strings.TrimPrefix(hs.URL, "http"))
	}
	c, err := client.New(urls[0], client.WithEndpoints(urls[1:]...),
		client.WithBackoff(client.BackoffConfig{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond}))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	stream, err := clientconn.CallBidiStream[echov1.ChatRequest, echov1.ChatResponse](cctx, c, ledgerChat)
	if err != nil {
		log.Fatal(err)
	}
	defer stream.Close()
	credit := func(amounts ...int) {
		var got []string
		for _, a := range amounts {
			if err := stream.Send(&echov1.ChatRequest{Text: strconv.Itoa(a)}); err != nil {
				log.Fatal(err)
			}
			res, err := stream.Receive()
			if err != nil {
				log.Fatal(err)
			}
			got = append(got, res.GetText())
		}
		fmt.Println("balances:", strings.Join(got, " "))
	}
	credit(100, 200, 300)
	first := <-runs
	fmt.Println("first run:", first[2:])
	// The replica serving the session goes away.
	replicas[first[:1]]()
	credit(400, 500)
	second := <-runs
	fmt.Println("second run on the other replica:", second[:1] != first[:1], second[2:])
	if err := stream.CloseSend(); err != nil {
		log.Fatal(err)
	}
	if _, err := stream.Receive(); !errors.Is(err, io.EOF) {
		log.Fatal(err)
	}
	info, err := ls.Info(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("credits in the ledger:", info.State.Msgs)
	// Output:
	// balances: 100 300 600
	// first run: after 0 requests
	// balances: 1000 1500
	// second run on the other replica: true after 3 requests
	// credits in the ledger: 5
}
