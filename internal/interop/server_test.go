package interop

import (
	"errors"
	"io"
	"testing"

	"github.com/tetherrpc/tether"
	interopv1 "github.com/tetherrpc/tether/gen/tether/testing/interop/v1"
)

// TestHalfDuplexCall covers the one method no interop case calls: the
// server answers only after the client half-closed, in request order.
func TestHalfDuplexCall(t *testing.T) {
	e := newEnv(t)
	stream, err := e.test.HalfDuplexCall(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	for i := range responseSizes {
		err := stream.Send(&interopv1.StreamingOutputCallRequest{
			ResponseParameters: []*interopv1.ResponseParameters{{Size: int32(responseSizes[i])}},
		})
		if err != nil {
			t.Fatalf("Send %d: %v", i, err)
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		res, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			if i != len(responseSizes) {
				t.Fatalf("%d responses, want %d", i, len(responseSizes))
			}
			return
		}
		if err != nil {
			t.Fatalf("Receive %d: %v", i, err)
		}
		if i >= len(responseSizes) {
			t.Fatalf("more than %d responses", len(responseSizes))
		}
		if err := checkPayload("response", res.GetPayload(), responseSizes[i]); err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
	}
}

// TestPayloadBounds: the server refuses to build payloads of a negative
// size or over MaxPayloadSize, and a status code that is not one.
func TestPayloadBounds(t *testing.T) {
	e := newEnv(t)
	for _, req := range []*interopv1.SimpleRequest{
		{ResponseSize: -1},
		{ResponseSize: MaxPayloadSize + 1},
		{ResponseStatus: &interopv1.EchoStatus{Code: -2}},
	} {
		_, err := e.test.UnaryCall(t.Context(), req)
		if got := tether.CodeOf(err); got != tether.CodeInvalidArgument {
			t.Errorf("UnaryCall(%v): %v, want invalid_argument", req, err)
		}
	}
}
