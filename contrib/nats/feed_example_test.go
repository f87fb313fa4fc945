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
	"github.com/tetherrpc/tether/contrib/nats/natsembed"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// feed serves Countdown as a feed of the JetStream stream FEED: response i
// is the event at stream sequence i, sent with that sequence as its cursor,
// up to sequence req.Count. A run that continues a stream another replica
// served (server.ResumeCursor) starts after the cursor's sequence.
type feed struct {
	echov1.UnimplementedEchoServiceHandler
	name string
	js   jetstream.JetStream
	runs chan<- string // the replica and where each run starts
}

func (f *feed) Countdown(ctx context.Context, req *echov1.CountdownRequest, stream *server.ServerStream[echov1.CountdownResponse]) error {
	start := uint64(1)
	if cursor, ok := server.ResumeCursor(ctx); ok && cursor != nil {
		// The client's claim: check it like any request field.
		if len(cursor) != 8 {
			return tether.Errorf(tether.CodeInvalidArgument, "feed: bad cursor")
		}
		start = binary.BigEndian.Uint64(cursor) + 1
	}
	f.runs <- fmt.Sprintf("%s from sequence %d", f.name, start)
	if start > uint64(req.GetCount()) {
		return nil
	}
	cons, err := f.js.OrderedConsumer(ctx, "FEED", jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   start,
	})
	if err != nil {
		return err
	}
	for {
		msg, err := cons.Next(jetstream.FetchContext(ctx))
		if err != nil {
			return err
		}
		meta, err := msg.Metadata()
		if err != nil {
			return err
		}
		v, _ := strconv.Atoi(string(msg.Data()))
		seq := meta.Sequence.Stream
		if err := stream.SendWithCursor(&echov1.CountdownResponse{Value: uint32(v)}, binary.BigEndian.AppendUint64(nil, seq)); err != nil {
			return err
		}
		if seq >= uint64(req.GetCount()) {
			return nil
		}
	}
}

// A resumable feed backed by a JetStream stream moves to another replica
// when the one serving it goes away: the handler attaches each event's
// stream sequence as its cursor, the client keeps the cursor of the last
// event it read, and the other replica runs the handler again from there.
// The client reads every event once and in order, and never sees the
// switch.
func Example_resumableFeed() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "tether-feed")
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
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "FEED", Subjects: []string{"feed.events"}}); err != nil {
		log.Fatal(err)
	}
	publish := func(from, to int) {
		for i := from; i <= to; i++ {
			if _, err := js.Publish(ctx, "feed.events", []byte(strconv.Itoa(i*100))); err != nil {
				log.Fatal(err)
			}
		}
	}

	// Two replicas of the feed service.
	runs := make(chan string, 4)
	replicas := map[string]func(){}
	var urls []string
	for _, name := range []string{"a", "b"} {
		srv := server.New()
		echov1.RegisterEchoServiceHandler(srv, &feed{name: name, js: js, runs: runs})
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

	publish(1, 5)
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	stream, err := echov1.NewEchoServiceClient(c).Countdown(cctx, &echov1.CountdownRequest{Count: 10}, client.WithResumable(true))
	if err != nil {
		log.Fatal(err)
	}
	defer stream.Close()
	read := func(n int) {
		var got []string
		for range n {
			msg, err := stream.Receive()
			if err != nil {
				log.Fatal(err)
			}
			got = append(got, strconv.Itoa(int(msg.GetValue())))
		}
		fmt.Println(strings.Join(got, " "))
	}
	read(5)
	first := <-runs
	fmt.Println("first run:", first[2:])
	// The replica serving the feed goes away; more events arrive.
	replicas[first[:1]]()
	publish(6, 10)
	read(5)
	second := <-runs
	fmt.Println("second run on the other replica:", second[:1] != first[:1], second[2:])
	if _, err := stream.Receive(); !errors.Is(err, io.EOF) {
		log.Fatal(err)
	}
	// Output:
	// 100 200 300 400 500
	// first run: from sequence 1
	// 600 700 800 900 1000
	// second run on the other replica: true from sequence 6
}
