package e2e

import (
	"context"
	"errors"
	"testing"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// binEcho sends the request's "x-raw-bin" values back in its response
// headers and trailers; Countdown also fails with them when asked to.
type binEcho struct{ echo.Handler }

func (*binEcho) Say(ctx context.Context, req *echov1.SayRequest) (*echov1.SayResponse, error) {
	ci, _ := server.CallInfoFromContext(ctx)
	got := ci.RequestHeader().Values("x-raw-bin")
	ci.ResponseHeader()["x-raw-bin"] = got
	ci.ResponseTrailer()["x-raw-trailer-bin"] = got
	if req.GetText() == "fail" {
		return nil, tether.Errorf(tether.CodeFailedPrecondition, "failing with binary trailers")
	}
	return &echov1.SayResponse{Text: req.GetText()}, nil
}

func (*binEcho) Countdown(ctx context.Context, req *echov1.CountdownRequest, stream *server.ServerStream[echov1.CountdownResponse]) error {
	ci, _ := server.CallInfoFromContext(ctx)
	ci.ResponseHeader()["x-raw-bin"] = ci.RequestHeader().Values("x-raw-bin")
	return stream.Send(&echov1.CountdownResponse{})
}

// TestBinaryMetadata: raw bytes (not valid UTF-8) under keys ending in -bin
// reach the handler in request metadata, and the client in response headers
// and trailers, of unary and streaming calls, on success and on failure.
// Before, the client failed such a call locally with internal.
func TestBinaryMetadata(t *testing.T) {
	_, u := secServer(t, &binEcho{})
	_, ec := secClient(t, u)
	ctx := testCtx(t)
	raw := []string{string([]byte{0xab, 0xab, 0xab}), string([]byte{0xff, 0x00, 0xfe})}
	req := tether.Metadata{"x-raw-bin": raw}
	same := func(what string, got []string) {
		t.Helper()
		if len(got) != len(raw) || got[0] != raw[0] || got[1] != raw[1] {
			t.Errorf("%s = %q, want %q", what, got, raw)
		}
	}

	var header, trailer tether.Metadata
	if _, err := ec.Say(ctx, &echov1.SayRequest{Text: "hi"}, client.WithHeader(req),
		client.WithResponseHeader(&header), client.WithResponseTrailer(&trailer)); err != nil {
		t.Fatalf("unary call with raw bytes in a -bin key: %v", err)
	}
	same("unary response header", header.Values("x-raw-bin"))
	same("unary response trailer", trailer.Values("x-raw-trailer-bin"))

	_, err := ec.Say(ctx, &echov1.SayRequest{Text: "fail"}, client.WithHeader(req))
	var te *tether.Error
	if !errors.As(err, &te) || te.Code() != tether.CodeFailedPrecondition {
		t.Fatalf("failing call: %v, want failed_precondition", err)
	}
	same("trailers of a failed call", te.Meta().Values("x-raw-trailer-bin"))

	st, err := ec.Countdown(ctx, &echov1.CountdownRequest{Count: 1}, client.WithHeader(req))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	hdr, err := st.Header()
	if err != nil {
		t.Fatalf("stream headers: %v", err)
	}
	same("stream response header", hdr.Values("x-raw-bin"))
}
