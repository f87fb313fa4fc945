package routeguide_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/server"
	routeguidev1 "github.com/tetherrpc/tether/testdata/corpus/gen/routeguide/v1"
	"github.com/tetherrpc/tether/testdata/corpus/gen/routeguide/v1/routeguidev1tether"
	"github.com/tetherrpc/tether/testdata/corpus/routeguide"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	home   = &routeguidev1.Point{Latitude: 409146138, Longitude: -746188906}
	office = &routeguidev1.Point{Latitude: 413628156, Longitude: -749015468}
)

// TestServedByBoth serves one Guide with grpc-go and tether at once, on
// 127.0.0.1, and makes every kind of call with each client; a note left
// through one is read through the other.
func TestServedByBoth(t *testing.T) {
	guide := &routeguide.Guide{Features: []*routeguidev1.Feature{
		{Name: "Berkshire Valley Management Area Trail", Location: home},
		{Name: "Office", Location: office},
	}}

	// grpc-go, as before the move.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	routeguidev1.RegisterRouteGuideServer(gs, routeguide.GRPC{Guide: guide})
	go gs.Serve(lis)
	defer gs.Stop()

	// tether, beside it.
	ts := server.New()
	routeguidev1tether.RegisterRouteGuideHandler(ts, routeguide.Tether{Guide: guide})
	hs := httptest.NewServer(ts)
	defer func() {
		ts.Close()
		hs.Close()
	}()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	g := routeguidev1.NewRouteGuideClient(conn)

	tc, err := client.New("ws" + strings.TrimPrefix(hs.URL, "http"))
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	tg := routeguidev1tether.NewRouteGuideClient(tc)

	// Unary.
	for name, get := range map[string]func(*routeguidev1.Point) (*routeguidev1.Feature, error){
		"grpc":   func(p *routeguidev1.Point) (*routeguidev1.Feature, error) { return g.GetFeature(ctx, p) },
		"tether": func(p *routeguidev1.Point) (*routeguidev1.Feature, error) { return tg.GetFeature(ctx, p) },
	} {
		f, err := get(office)
		if err != nil || f.GetName() != "Office" {
			t.Errorf("%s GetFeature = %v, %v", name, f, err)
		}
	}

	// Server streaming.
	rect := &routeguidev1.Rectangle{Lo: &routeguidev1.Point{Latitude: 400000000, Longitude: -750000000}, Hi: &routeguidev1.Point{Latitude: 420000000, Longitude: -730000000}}
	gl, err := g.ListFeatures(ctx, rect)
	if err != nil {
		t.Fatal(err)
	}
	tl, err := tg.ListFeatures(ctx, rect)
	if err != nil {
		t.Fatal(err)
	}
	if n := count(gl.Recv); n != 2 {
		t.Errorf("grpc ListFeatures sent %d features, want 2", n)
	}
	if n := count(tl.Receive); n != 2 {
		t.Errorf("tether ListFeatures sent %d features, want 2", n)
	}

	// Client streaming.
	gr, err := g.RecordRoute(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := tg.RecordRoute(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []*routeguidev1.Point{home, {Latitude: 1, Longitude: 1}, office} {
		if err := gr.Send(p); err != nil {
			t.Fatal(err)
		}
		if err := tr.Send(p); err != nil {
			t.Fatal(err)
		}
	}
	if s, err := gr.CloseAndRecv(); err != nil || s.GetPointCount() != 3 || s.GetFeatureCount() != 2 {
		t.Errorf("grpc RecordRoute = %v, %v", s, err)
	}
	if s, err := tr.CloseAndReceive(); err != nil || s.GetPointCount() != 3 || s.GetFeatureCount() != 2 {
		t.Errorf("tether RecordRoute = %v, %v", s, err)
	}

	// Bidi: a note left through grpc-go comes back through tether.
	gc, err := g.RouteChat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := gc.Send(&routeguidev1.RouteNote{Location: home, Message: "left over grpc"}); err != nil {
		t.Fatal(err)
	}
	if err := gc.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if n := count(gc.Recv); n != 0 {
		t.Errorf("grpc RouteChat answered %d notes, want none", n)
	}
	tch, err := tg.RouteChat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tch.Send(&routeguidev1.RouteNote{Location: home, Message: "left over tether"}); err != nil {
		t.Fatal(err)
	}
	note, err := tch.Receive()
	if err != nil || note.GetMessage() != "left over grpc" {
		t.Errorf("tether RouteChat = %v, %v, want the note left over grpc", note, err)
	}
	if err := tch.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := tch.Receive(); !errors.Is(err, io.EOF) {
		t.Errorf("tether RouteChat end = %v, want io.EOF", err)
	}
}

// count receives until the end of a stream and returns how many messages
// came, or -1 on an error.
func count[T any](receive func() (*T, error)) int {
	n := 0
	for {
		_, err := receive()
		if errors.Is(err, io.EOF) {
			return n
		}
		if err != nil {
			return -1
		}
		n++
	}
}
