package e2e

import (
	"context"
	"strings"
	"testing"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// bigTrailerEcho answers Say with 8 KiB of trailers.
type bigTrailerEcho struct{ echo.Handler }

func (*bigTrailerEcho) Say(ctx context.Context, req *echov1.SayRequest) (*echov1.SayResponse, error) {
	ci, _ := server.CallInfoFromContext(ctx)
	ci.ResponseTrailer().Set("big", strings.Repeat("x", 8<<10))
	return &echov1.SayResponse{Text: req.GetText()}, nil
}

// TestHeaderLimitsAnnounced: each side announces the largest metadata it
// accepts in the handshake, and the other never sends more. A server whose
// handler succeeded with 8 KiB of trailers, answering a client that accepts
// 4 KiB, sends the success without the trailers, instead of an END the
// client would reject (which turned a call that had taken effect into
// resource_exhausted). A client whose request metadata is over the server's
// announced limit fails the call before sending it.
func TestHeaderLimitsAnnounced(t *testing.T) {
	_, u := secServer(t, &bigTrailerEcho{}) // accepts 16 KiB itself
	_, ec := secClient(t, u, client.WithMaxHeaderBytes(4096))
	ctx := testCtx(t)
	var trailer tether.Metadata
	res, err := ec.Say(ctx, &echov1.SayRequest{Text: "hi"}, client.WithResponseTrailer(&trailer))
	if err != nil || res.GetText() != "hi" {
		t.Fatalf("call whose handler succeeded with trailers over the client's limit: %v %v; want success", res, err)
	}
	if trailer.Get("big") != "" {
		t.Fatal("trailers over the client's announced limit were sent")
	}
	_, u2 := secServer(t, nil, server.WithMaxHeaderBytes(2048))
	_, ec2 := secClient(t, u2, client.WithMaxHeaderBytes(4096))
	big := tether.Metadata{}
	big.Set("x-big", strings.Repeat("y", 3000)) // under the client's 4096, over the server's 2048
	_, err = ec2.Say(ctx, &echov1.SayRequest{Text: "hi"}, client.WithHeader(big))
	if tether.CodeOf(err) != tether.CodeResourceExhausted || !strings.Contains(err.Error(), "the server's announced limit of 2048") {
		t.Fatalf("request metadata over the server's announced 2048 bytes: %v; want resource_exhausted naming the limit", err)
	}
}

// longErrorEcho fails Say with not_found and a 150-byte message.
type longErrorEcho struct{ echo.Handler }

func (*longErrorEcho) Say(context.Context, *echov1.SayRequest) (*echov1.SayResponse, error) {
	return nil, tether.Errorf(tether.CodeNotFound, "%s", strings.Repeat("m", 150))
}

// TestTinyHeaderLimitKeepsCode: even a client that accepts only 100 bytes
// of status gets the handler's code; the message that does not fit is
// dropped.
func TestTinyHeaderLimitKeepsCode(t *testing.T) {
	_, u := secServer(t, &longErrorEcho{})
	_, ec := secClient(t, u, client.WithMaxHeaderBytes(100))
	_, err := ec.Say(testCtx(t), &echov1.SayRequest{})
	if tether.CodeOf(err) != tether.CodeNotFound {
		t.Fatalf("error over the client's 100-byte limit: %v; want not_found", err)
	}
}
