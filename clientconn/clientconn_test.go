package clientconn_test

import (
	"context"
	"errors"
	"io"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/clientconn"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeConn answers calls without a socket: what a test of code that uses a
// generated client can do, since generated clients take a clientconn.Conn.
type fakeConn struct {
	method *clientconn.Method
	opts   *clientconn.CallOptions
	stream *fakeStream
	err    error
}

func (c *fakeConn) Invoke(ctx context.Context, m *clientconn.Method, req, res proto.Message, opts ...clientconn.CallOption) error {
	c.method, c.opts = m, clientconn.NewCallOptions(opts...)
	if c.err != nil {
		return c.err
	}
	res.(*echov1.SayResponse).Text = "fake: " + req.(*echov1.SayRequest).GetText()
	return nil
}

func (c *fakeConn) NewStream(ctx context.Context, m *clientconn.Method, opts ...clientconn.CallOption) (clientconn.Stream, error) {
	c.method, c.opts = m, clientconn.NewCallOptions(opts...)
	if c.err != nil {
		return nil, c.err
	}
	return c.stream, nil
}

// fakeStream records what the caller did and answers from responses.
type fakeStream struct {
	sent      []proto.Message
	sendErr   error
	responses []proto.Message
	closeSend int
	closed    int
}

func (s *fakeStream) Send(msg proto.Message) error {
	if s.sendErr != nil {
		return s.sendErr
	}
	s.sent = append(s.sent, msg)
	return nil
}

func (s *fakeStream) Receive(msg proto.Message) error {
	if len(s.responses) == 0 {
		return io.EOF
	}
	proto.Merge(msg, s.responses[0])
	s.responses = s.responses[1:]
	return nil
}

func (s *fakeStream) CloseSend() error                 { s.closeSend++; return nil }
func (s *fakeStream) Header() (tether.Metadata, error) { return tether.Metadata{}, nil }
func (s *fakeStream) Trailer() tether.Metadata         { return tether.Metadata{} }
func (s *fakeStream) Close() error                     { s.closed++; return nil }

func TestGeneratedClientOnAFakeConn(t *testing.T) {
	ctx := context.Background()
	c := &fakeConn{}
	echo := echov1.NewEchoServiceClient(c)
	failFast := func(o *clientconn.CallOptions) { o.FailFast = true }
	res, err := echo.Say(ctx, &echov1.SayRequest{Text: "hi"}, failFast)
	if err != nil || res.GetText() != "fake: hi" {
		t.Fatalf("Say = %v, %v", res, err)
	}
	if c.method.Spec.Procedure != echov1.EchoServiceSayProcedure || c.method.Spec.StreamType != tether.StreamTypeUnary {
		t.Errorf("Invoke got method %+v", c.method.Spec)
	}
	if !c.opts.FailFast {
		t.Error("the call option did not reach the Conn")
	}

	c.err = tether.Errorf(tether.CodeUnavailable, "down")
	if res, err := echo.Say(ctx, &echov1.SayRequest{}); res != nil || tether.CodeOf(err) != tether.CodeUnavailable {
		t.Fatalf("Say on a failing conn = %v, %v", res, err)
	}
}

func TestServerStreamSendsTheRequestAndHalfCloses(t *testing.T) {
	ctx := context.Background()
	st := &fakeStream{responses: []proto.Message{&echov1.CountdownResponse{Value: 2}, &echov1.CountdownResponse{Value: 1}}}
	echo := echov1.NewEchoServiceClient(&fakeConn{stream: st})
	s, err := echo.Countdown(ctx, &echov1.CountdownRequest{Count: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if len(st.sent) != 1 || st.sent[0].(*echov1.CountdownRequest).GetCount() != 2 || st.closeSend != 1 {
		t.Fatalf("sent %v, CloseSend %d times; want the request, then CloseSend once", st.sent, st.closeSend)
	}
	var got []uint32
	for {
		msg, err := s.Receive()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, msg.GetValue())
	}
	if len(got) != 2 || got[0] != 2 || got[1] != 1 {
		t.Errorf("received %v, want [2 1]", got)
	}

	// A Send that fails closes the stream; io.EOF (the server already
	// ended the call) does not fail the call: Receive reports its status.
	st = &fakeStream{sendErr: tether.Errorf(tether.CodeInternal, "boom")}
	if _, err := clientconn.CallServerStream[echov1.CountdownRequest, echov1.CountdownResponse](ctx, &fakeConn{stream: st}, &clientconn.Method{}, &echov1.CountdownRequest{}); tether.CodeOf(err) != tether.CodeInternal || st.closed != 1 {
		t.Errorf("failed Send: err %v, Close called %d times; want internal, once", err, st.closed)
	}
	st = &fakeStream{sendErr: io.EOF}
	if _, err := clientconn.CallServerStream[echov1.CountdownRequest, echov1.CountdownResponse](ctx, &fakeConn{stream: st}, &clientconn.Method{}, &echov1.CountdownRequest{}); err != nil || st.closeSend != 1 {
		t.Errorf("Send io.EOF: err %v, CloseSend %d times; want nil, once", err, st.closeSend)
	}
}

func TestClientStreamWantsExactlyOneResponse(t *testing.T) {
	ctx := context.Background()
	st := &fakeStream{responses: []proto.Message{&echov1.CollectResponse{Joined: "a b", Count: 2}}}
	s, err := echov1.NewEchoServiceClient(&fakeConn{stream: st}).Collect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, text := range []string{"a", "b"} {
		if err := s.Send(&echov1.CollectRequest{Text: text}); err != nil {
			t.Fatal(err)
		}
	}
	res, err := s.CloseAndReceive()
	if err != nil || res.GetJoined() != "a b" {
		t.Fatalf("CloseAndReceive = %v, %v", res, err)
	}

	// Two responses: unimplemented, and the call is closed.
	st = &fakeStream{responses: []proto.Message{&echov1.CollectResponse{}, &echov1.CollectResponse{}}}
	s, _ = echov1.NewEchoServiceClient(&fakeConn{stream: st}).Collect(ctx)
	if _, err := s.CloseAndReceive(); tether.CodeOf(err) != tether.CodeUnimplemented || st.closed != 1 {
		t.Errorf("two responses: %v, Close called %d times", err, st.closed)
	}
	// None: unimplemented too.
	s, _ = echov1.NewEchoServiceClient(&fakeConn{stream: &fakeStream{}}).Collect(ctx)
	if _, err := s.CloseAndReceive(); tether.CodeOf(err) != tether.CodeUnimplemented {
		t.Errorf("no response: %v", err)
	}
}
