package interop

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	interopv1 "github.com/tetherrpc/tether/gen/tether/testing/interop/v1"
)

// interopCase is one of gRPC's interop cases (doc/interop-test-descriptions.md
// in grpc/grpc), with the same procedure and the same client assertions. run
// returns nil if every assertion held.
type interopCase struct {
	name string
	run  func(ctx context.Context, e *env) error
}

// cases lists the cases in the order TestInterop runs them.
var cases = []interopCase{
	{"empty_unary", emptyUnary},
	{"large_unary", largeUnary},
	{"client_streaming", clientStreaming},
	{"server_streaming", serverStreaming},
	{"ping_pong", pingPong},
	{"empty_stream", emptyStream},
	{"custom_metadata", customMetadata},
	{"status_code_and_message", statusCodeAndMessage},
	{"special_status_message", specialStatusMessage},
	{"unimplemented_method", unimplementedMethod},
	{"unimplemented_service", unimplementedService},
	{"cancel_after_begin", cancelAfterBegin},
	{"cancel_after_begin_in_handler", cancelAfterBeginInHandler},
	{"cancel_after_first_response", cancelAfterFirstResponse},
	{"timeout_on_sleeping_server", timeoutOnSleepingServer},
}

// The sizes gRPC's cases use.
const (
	largeRequestSize  = 271828
	largeResponseSize = 314159
)

var (
	// Request payload sizes of client_streaming and ping_pong; their sum
	// is 74922.
	requestSizes = []int{27182, 8, 1828, 45904}
	// Response payload sizes of server_streaming and ping_pong.
	responseSizes = []int{31415, 9, 2653, 58979}
)

func payload(n int) *interopv1.Payload { return &interopv1.Payload{Body: make([]byte, n)} }

// checkPayload checks that p's body has size zero bytes.
func checkPayload(what string, p *interopv1.Payload, size int) error {
	b := p.GetBody()
	if len(b) != size {
		return fmt.Errorf("%s: payload body of %d bytes, want %d", what, len(b), size)
	}
	if i := slices.IndexFunc(b, func(c byte) bool { return c != 0 }); i >= 0 {
		return fmt.Errorf("%s: payload byte %d is %#x, want zero", what, i, b[i])
	}
	return nil
}

// checkStatus checks that err carries code and message.
func checkStatus(what string, err error, code tether.Code, message string) error {
	if err == nil {
		return fmt.Errorf("%s: succeeded, want %s %q", what, code, message)
	}
	if got := tether.CodeOf(err); got != code {
		return fmt.Errorf("%s: code %s (%v), want %s", what, got, err, code)
	}
	if got := tether.AsError(err).Message(); got != message {
		return fmt.Errorf("%s: message %q, want %q", what, got, message)
	}
	return nil
}

// checkCode checks that err carries code, whatever its message.
func checkCode(what string, err error, code tether.Code) error {
	if got := tether.CodeOf(err); got != code {
		return fmt.Errorf("%s: code %s (%v), want %s", what, got, err, code)
	}
	return nil
}

// emptyUnary: an empty request gets an empty response.
func emptyUnary(ctx context.Context, e *env) error {
	res, err := e.test.EmptyCall(ctx, &interopv1.Empty{})
	if err != nil {
		return fmt.Errorf("EmptyCall: %w", err)
	}
	if res == nil {
		return errors.New("EmptyCall: nil response")
	}
	return nil
}

// largeUnary: 271828 bytes out, 314159 bytes back.
func largeUnary(ctx context.Context, e *env) error {
	res, err := e.test.UnaryCall(ctx, &interopv1.SimpleRequest{
		ResponseSize: largeResponseSize,
		Payload:      payload(largeRequestSize),
	})
	if err != nil {
		return fmt.Errorf("UnaryCall: %w", err)
	}
	return checkPayload("UnaryCall response", res.GetPayload(), largeResponseSize)
}

// clientStreaming: four requests, one response with their total size.
func clientStreaming(ctx context.Context, e *env) error {
	stream, err := e.test.StreamingInputCall(ctx)
	if err != nil {
		return fmt.Errorf("StreamingInputCall: %w", err)
	}
	defer stream.Close()
	total := 0
	for i, n := range requestSizes {
		if err := stream.Send(&interopv1.StreamingInputCallRequest{Payload: payload(n)}); err != nil {
			return fmt.Errorf("Send %d: %w", i, err)
		}
		total += n
	}
	res, err := stream.CloseAndReceive()
	if err != nil {
		return fmt.Errorf("CloseAndReceive: %w", err)
	}
	if got := res.GetAggregatedPayloadSize(); got != int32(total) || total != 74922 {
		return fmt.Errorf("aggregated_payload_size %d, want %d", got, total)
	}
	return nil
}

// serverStreaming: one request, four responses of the requested sizes.
func serverStreaming(ctx context.Context, e *env) error {
	req := &interopv1.StreamingOutputCallRequest{}
	for _, n := range responseSizes {
		req.ResponseParameters = append(req.ResponseParameters, &interopv1.ResponseParameters{Size: int32(n)})
	}
	stream, err := e.test.StreamingOutputCall(ctx, req)
	if err != nil {
		return fmt.Errorf("StreamingOutputCall: %w", err)
	}
	defer stream.Close()
	for i := 0; ; i++ {
		res, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			if i != len(responseSizes) {
				return fmt.Errorf("%d responses, want %d", i, len(responseSizes))
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("Receive %d: %w", i, err)
		}
		if i >= len(responseSizes) {
			return fmt.Errorf("more than %d responses", len(responseSizes))
		}
		if err := checkPayload(fmt.Sprintf("response %d", i), res.GetPayload(), responseSizes[i]); err != nil {
			return err
		}
	}
}

// pingPong: four request and response pairs on one full-duplex call, each
// request sent after the previous response arrived.
func pingPong(ctx context.Context, e *env) error {
	stream, err := e.test.FullDuplexCall(ctx)
	if err != nil {
		return fmt.Errorf("FullDuplexCall: %w", err)
	}
	defer stream.Close()
	for i := range requestSizes {
		err := stream.Send(&interopv1.StreamingOutputCallRequest{
			ResponseParameters: []*interopv1.ResponseParameters{{Size: int32(responseSizes[i])}},
			Payload:            payload(requestSizes[i]),
		})
		if err != nil {
			return fmt.Errorf("Send %d: %w", i, err)
		}
		res, err := stream.Receive()
		if err != nil {
			return fmt.Errorf("Receive %d: %w", i, err)
		}
		if err := checkPayload(fmt.Sprintf("response %d", i), res.GetPayload(), responseSizes[i]); err != nil {
			return err
		}
	}
	if err := stream.CloseSend(); err != nil {
		return fmt.Errorf("CloseSend: %w", err)
	}
	if _, err := stream.Receive(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("Receive after the last response: %v, want io.EOF (a fifth response or a failed call)", err)
	}
	return nil
}

// emptyStream: a full-duplex call with no messages either way succeeds.
func emptyStream(ctx context.Context, e *env) error {
	stream, err := e.test.FullDuplexCall(ctx)
	if err != nil {
		return fmt.Errorf("FullDuplexCall: %w", err)
	}
	defer stream.Close()
	if err := stream.CloseSend(); err != nil {
		return fmt.Errorf("CloseSend: %w", err)
	}
	if _, err := stream.Receive(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("Receive: %v, want io.EOF (no response, call successful)", err)
	}
	return nil
}

// The values custom_metadata sends. gRPC sends the trailing value as binary
// (0xababab under a -bin key); tether metadata values are UTF-8 strings
// (docs/PROTOCOL.md §9), so it travels base64-encoded and the case checks
// the decoded bytes.
const initialMetadataValue = "test_initial_metadata_value"

var trailingMetadataValue = []byte{0xab, 0xab, 0xab}

func echoRequestMetadata() client.CallOption {
	return client.WithHeader(tether.NewMetadata(
		EchoInitialKey, initialMetadataValue,
		EchoTrailingKey, base64.StdEncoding.EncodeToString(trailingMetadataValue),
	))
}

// checkEchoedMetadata checks the response headers and trailers of a call
// made with echoRequestMetadata.
func checkEchoedMetadata(what string, header, trailer tether.Metadata) error {
	if got := header.Values(EchoInitialKey); !slices.Equal(got, []string{initialMetadataValue}) {
		return fmt.Errorf("%s: response header %s = %q, want [%q]", what, EchoInitialKey, got, initialMetadataValue)
	}
	got := trailer.Values(EchoTrailingKey)
	if len(got) != 1 {
		return fmt.Errorf("%s: response trailer %s = %q, want one value", what, EchoTrailingKey, got)
	}
	b, err := base64.StdEncoding.DecodeString(got[0])
	if err != nil || !bytes.Equal(b, trailingMetadataValue) {
		return fmt.Errorf("%s: response trailer %s = %q (decoded %x, %v), want %x", what, EchoTrailingKey, got[0], b, err, trailingMetadataValue)
	}
	return nil
}

// customMetadata: request metadata comes back in the response headers and
// trailers, on a unary and on a full-duplex call.
func customMetadata(ctx context.Context, e *env) error {
	var header, trailer tether.Metadata
	res, err := e.test.UnaryCall(ctx, &interopv1.SimpleRequest{
		ResponseSize: largeResponseSize,
		Payload:      payload(largeRequestSize),
	}, echoRequestMetadata(), client.WithResponseHeader(&header), client.WithResponseTrailer(&trailer))
	if err != nil {
		return fmt.Errorf("UnaryCall: %w", err)
	}
	if err := checkPayload("UnaryCall response", res.GetPayload(), largeResponseSize); err != nil {
		return err
	}
	if err := checkEchoedMetadata("UnaryCall", header, trailer); err != nil {
		return err
	}

	stream, err := e.test.FullDuplexCall(ctx, echoRequestMetadata())
	if err != nil {
		return fmt.Errorf("FullDuplexCall: %w", err)
	}
	defer stream.Close()
	err = stream.Send(&interopv1.StreamingOutputCallRequest{
		ResponseParameters: []*interopv1.ResponseParameters{{Size: largeResponseSize}},
		Payload:            payload(largeRequestSize),
	})
	if err != nil {
		return fmt.Errorf("FullDuplexCall Send: %w", err)
	}
	if err := stream.CloseSend(); err != nil {
		return fmt.Errorf("FullDuplexCall CloseSend: %w", err)
	}
	res2, err := stream.Receive()
	if err != nil {
		return fmt.Errorf("FullDuplexCall Receive: %w", err)
	}
	if err := checkPayload("FullDuplexCall response", res2.GetPayload(), largeResponseSize); err != nil {
		return err
	}
	if _, err := stream.Receive(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("FullDuplexCall Receive after the response: %v, want io.EOF", err)
	}
	header, err = stream.Header()
	if err != nil {
		return fmt.Errorf("FullDuplexCall Header: %w", err)
	}
	return checkEchoedMetadata("FullDuplexCall", header, stream.Trailer())
}

// echoStatus makes a unary and a full-duplex call that ask for the status
// (code, message) and checks that both end with it.
func echoStatus(ctx context.Context, e *env, code tether.Code, message string) error {
	status := &interopv1.EchoStatus{Code: int32(code), Message: message}
	_, err := e.test.UnaryCall(ctx, &interopv1.SimpleRequest{ResponseStatus: status})
	if err := checkStatus("UnaryCall", err, code, message); err != nil {
		return err
	}

	stream, err := e.test.FullDuplexCall(ctx)
	if err != nil {
		return fmt.Errorf("FullDuplexCall: %w", err)
	}
	defer stream.Close()
	// io.EOF from Send means the server has already ended the call: its
	// status comes from Receive.
	if err := stream.Send(&interopv1.StreamingOutputCallRequest{ResponseStatus: status}); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("FullDuplexCall Send: %w", err)
	}
	if err := stream.CloseSend(); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("FullDuplexCall CloseSend: %w", err)
	}
	_, err = stream.Receive()
	return checkStatus("FullDuplexCall", err, code, message)
}

// statusCodeAndMessage: a status the client asks for comes back with its
// code and message, on a unary and on a full-duplex call.
func statusCodeAndMessage(ctx context.Context, e *env) error {
	return echoStatus(ctx, e, tether.CodeUnknown, "test status message")
}

// specialStatusMessage: a status message with whitespace and non-ASCII
// characters comes back unchanged.
func specialStatusMessage(ctx context.Context, e *env) error {
	const message = "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n"
	_, err := e.test.UnaryCall(ctx, &interopv1.SimpleRequest{
		ResponseStatus: &interopv1.EchoStatus{Code: int32(tether.CodeUnknown), Message: message},
	})
	return checkStatus("UnaryCall", err, tether.CodeUnknown, message)
}

// unimplementedMethod: a method the server does not implement ends with
// unimplemented.
func unimplementedMethod(ctx context.Context, e *env) error {
	_, err := e.test.UnimplementedCall(ctx, &interopv1.Empty{})
	return checkCode("TestService.UnimplementedCall", err, tether.CodeUnimplemented)
}

// unimplementedService: a service the server does not serve ends with
// unimplemented.
func unimplementedService(ctx context.Context, e *env) error {
	_, err := e.unimpl.UnimplementedCall(ctx, &interopv1.Empty{})
	return checkCode("UnimplementedService.UnimplementedCall", err, tether.CodeUnimplemented)
}

// cancelAfterBegin: a client-streaming call canceled as soon as it has
// started, before any message, ends with canceled; as gRPC's Go client does,
// it cancels and then calls CloseAndReceive.
//
// The handler may or may not run (the cancellation can overtake the call's
// OPEN): if it runs, it must end with canceled too. That is checked once the
// server has closed, when every handler has returned (tracker.checkEnd).
func cancelAfterBegin(ctx context.Context, e *env) error {
	rec := e.calls.track() // not forgotten: the handler may start after the case
	e.calls.checkAtEnd(ctx, rec, tether.CodeCanceled)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := e.test.StreamingInputCall(cctx, rec.header())
	if err != nil {
		return fmt.Errorf("StreamingInputCall: %w", err)
	}
	defer stream.Close()
	cancel()
	res, err := stream.CloseAndReceive()
	if err == nil {
		return fmt.Errorf("CloseAndReceive after cancel: succeeded (aggregated_payload_size %d), want canceled", res.GetAggregatedPayloadSize())
	}
	return checkCode("CloseAndReceive after cancel", err, tether.CodeCanceled)
}

// cancelAfterBeginInHandler is cancelAfterBegin, canceled once the handler
// runs: then the handler's outcome is always there to check, at once. It
// ends with canceled, for the caller and for the handler.
func cancelAfterBeginInHandler(ctx context.Context, e *env) error {
	rec := e.calls.track()
	defer e.calls.forget(rec)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := e.test.StreamingInputCall(cctx, rec.header())
	if err != nil {
		return fmt.Errorf("StreamingInputCall: %w", err)
	}
	defer stream.Close()
	if err := rec.wait(ctx, rec.started, "start"); err != nil {
		return err
	}
	cancel()
	res, err := stream.CloseAndReceive()
	var clientErr error
	if err == nil {
		clientErr = fmt.Errorf("CloseAndReceive after cancel: succeeded (aggregated_payload_size %d), want canceled", res.GetAggregatedPayloadSize())
	} else {
		clientErr = checkCode("CloseAndReceive after cancel", err, tether.CodeCanceled)
	}
	return errors.Join(clientErr, rec.expectEnd(ctx, tether.CodeCanceled))
}

// cancelAfterFirstResponse: a full-duplex call canceled after its first
// response ends with canceled, for the caller and for the handler.
func cancelAfterFirstResponse(ctx context.Context, e *env) error {
	rec := e.calls.track()
	defer e.calls.forget(rec)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := e.test.FullDuplexCall(cctx, rec.header())
	if err != nil {
		return fmt.Errorf("FullDuplexCall: %w", err)
	}
	defer stream.Close()
	err = stream.Send(&interopv1.StreamingOutputCallRequest{
		ResponseParameters: []*interopv1.ResponseParameters{{Size: int32(responseSizes[0])}},
		Payload:            payload(requestSizes[0]),
	})
	if err != nil {
		return fmt.Errorf("Send: %w", err)
	}
	res, err := stream.Receive()
	if err != nil {
		return fmt.Errorf("Receive: %w", err)
	}
	if err := checkPayload("response", res.GetPayload(), responseSizes[0]); err != nil {
		return err
	}
	cancel()
	_, err = stream.Receive()
	return errors.Join(checkCode("Receive after cancel", err, tether.CodeCanceled), rec.expectEnd(ctx, tether.CodeCanceled))
}

// timeoutOnSleepingServer: a full-duplex call with a 1 ms timeout, whose
// server waits for more requests, ends with deadline_exceeded.
func timeoutOnSleepingServer(ctx context.Context, e *env) error {
	cctx, cancel := context.WithTimeout(ctx, timeoutOnSleepingServerTimeout)
	defer cancel()
	stream, err := e.test.FullDuplexCall(cctx)
	if err != nil {
		// The deadline may pass before the call starts.
		return checkCode("FullDuplexCall", err, tether.CodeDeadlineExceeded)
	}
	defer stream.Close()
	// The call may already have ended: Send returns io.EOF, or the
	// deadline error itself; either way Receive tells the outcome.
	err = stream.Send(&interopv1.StreamingOutputCallRequest{Payload: payload(requestSizes[0])})
	if err != nil && !errors.Is(err, io.EOF) && tether.CodeOf(err) != tether.CodeDeadlineExceeded {
		return fmt.Errorf("Send: %w, want success, io.EOF or deadline_exceeded", err)
	}
	_, err = stream.Receive()
	return checkCode("Receive", err, tether.CodeDeadlineExceeded)
}
