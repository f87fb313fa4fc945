// Package echo implements example.echo.v1.EchoService: one method of each
// kind of call. The demo (cmd/tether demo) and the end-to-end tests serve it.
package echo

import (
	"context"
	"errors"
	"io"
	"strconv"
	"strings"
	"time"

	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// Handler implements echov1.EchoServiceHandler.
type Handler struct {
	echov1.UnimplementedEchoServiceHandler
}

var _ echov1.EchoServiceHandler = (*Handler)(nil)

// Say echoes the request. A request with SleepMillis waits that long first,
// or until the call is canceled.
func (h *Handler) Say(ctx context.Context, req *echov1.SayRequest) (*echov1.SayResponse, error) {
	if req.GetSleepMillis() > 0 {
		select {
		case <-time.After(time.Duration(req.GetSleepMillis()) * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if ci, ok := server.CallInfoFromContext(ctx); ok {
		ci.ResponseTrailer().Set("echo-length", strconv.Itoa(len(req.GetPayload())))
	}
	return &echov1.SayResponse{Text: req.GetText(), Payload: req.GetPayload()}, nil
}

// Countdown sends Count, Count-1, ..., 1.
func (h *Handler) Countdown(ctx context.Context, req *echov1.CountdownRequest, stream *server.ServerStream[echov1.CountdownResponse]) error {
	for i := req.GetCount(); i > 0; i-- {
		if err := stream.Send(&echov1.CountdownResponse{Value: i, Payload: req.GetPayload()}); err != nil {
			return err
		}
	}
	return nil
}

// Collect joins every text it receives with spaces.
func (h *Handler) Collect(ctx context.Context, stream *server.ClientStream[echov1.CollectRequest]) (*echov1.CollectResponse, error) {
	var texts []string
	for {
		req, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			return &echov1.CollectResponse{Joined: strings.Join(texts, " "), Count: uint32(len(texts))}, nil
		}
		if err != nil {
			return nil, err
		}
		texts = append(texts, req.GetText())
	}
}

// Chat answers each message with "echo: " and its text, and the same payload.
func (h *Handler) Chat(ctx context.Context, stream *server.BidiStream[echov1.ChatRequest, echov1.ChatResponse]) error {
	for {
		req, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&echov1.ChatResponse{Text: "echo: " + req.GetText(), Payload: req.GetPayload()}); err != nil {
			return err
		}
	}
}
