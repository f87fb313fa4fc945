package bench

import (
	"bytes"
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	benchv1 "github.com/tetherrpc/tether/bench/gen/bench/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestSystems serves BenchService over every system and checks that its
// client gets the same answers from the same handlers: a unary echo, a
// server stream and a client stream of 64 KiB messages, and bidi round trips where the system
// supports them (and a clean refusal where it does not).
func TestSystems(t *testing.T) {
	for _, sys := range RPCSystems {
		t.Run(sys, func(t *testing.T) {
			srv, err := Serve(sys)
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := Dial(ctx, sys, srv.Targets[0], true)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()

			body := []byte("sixteen bytes!!!")
			res, err := c.Unary(ctx, &benchv1.Payload{Body: body})
			if err != nil || !bytes.Equal(res.GetBody(), body) {
				t.Fatalf("Unary = %q, %v; want %q", res.GetBody(), err, body)
			}
			n, err := c.ServerStream(ctx, &benchv1.StreamRequest{Count: 5, Size: 64 << 10})
			if err != nil || n != 5 {
				t.Fatalf("ServerStream = %d, %v; want 5 messages", n, err)
			}
			n, err = c.ClientStream(ctx, &benchv1.Payload{Body: make([]byte, 64<<10)}, 5)
			if err != nil || n != 5 {
				t.Fatalf("ClientStream = %d, %v; want 5 messages", n, err)
			}

			s, err := c.Bidi(ctx)
			if why := Unsupported(sys, KindBidi); why != "" {
				if err == nil {
					err = s.Send(&benchv1.Payload{Body: body})
					if err == nil {
						_, err = s.Recv()
					}
					_ = s.Close()
				}
				if err == nil {
					t.Fatalf("Bidi worked, but Unsupported says %q", why)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for range 3 {
				if err := s.Send(&benchv1.Payload{Body: body}); err != nil {
					t.Fatal(err)
				}
				res, err := s.Recv()
				if err != nil || !bytes.Equal(res.GetBody(), body) {
					t.Fatalf("Bidi Recv = %q, %v; want %q", res.GetBody(), err, body)
				}
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if d := Dialed(c); d != 1 {
				t.Errorf("%d connections dialed for calls one at a time, want 1", d)
			}
		})
	}
}

// TestRawCeilings checks the raw gorilla/websocket server the ceilings use:
// its echo returns the bytes sent, its stream endpoint sends the payloads
// asked for and its upload endpoint counts the payloads sent, twice on one
// connection each.
func TestRawCeilings(t *testing.T) {
	srv, err := Serve(Raw)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	ws, err := DialRaw(ctx, srv.Targets[0])
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	body := []byte("sixteen bytes!!!")
	got, err := RawEcho(ws, body, nil)
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("RawEcho = %q, %v; want %q", got, err, body)
	}

	st, err := DialRaw(ctx, RawStreamURL(srv.Targets[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var buf []byte
	for _, size := range []uint32{1024, 64 << 10} {
		var n int
		n, buf, err = RawStream(st, &benchv1.StreamRequest{Count: 3, Size: size}, buf)
		if err != nil || n != 3 {
			t.Fatalf("RawStream(size %d) = %d, %v; want 3 payloads", size, n, err)
		}
		p := new(benchv1.Payload)
		if err := proto.Unmarshal(buf, p); err != nil || len(p.GetBody()) != int(size) {
			t.Fatalf("last payload: %d bytes, %v; want %d", len(p.GetBody()), err, size)
		}
	}

	up, err := DialRawUpload(ctx, RawUploadURL(srv.Targets[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	for _, size := range []int{1024, 64 << 10} {
		var n int
		n, buf, err = RawUpload(up, &benchv1.Payload{Body: make([]byte, size)}, 3, buf)
		if err != nil || n != 3 {
			t.Fatalf("RawUpload(size %d) = %d, %v; want 3 payloads", size, n, err)
		}
	}
}
