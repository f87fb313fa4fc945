package mux

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestCloseFrameNotLost: when another goroutine closes the connection while
// the peer is sending, the peer must still read the close frame and its code
// (the reader may not close the socket before closeWith has written it).
func TestCloseFrameNotLost(t *testing.T) {
	conns := make(chan *Conn, 1)
	up := websocket.Upgrader{}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		conns <- New(ws, RoleServer, Config{Accept: func(s *Stream, _ *tetherv1.Open) { _ = s.Finish(nil, nil) }})
	}))
	defer hs.Close()
	u := "ws" + strings.TrimPrefix(hs.URL, "http")
	lost := 0
	const n = 200
	for i := 0; i < n; i++ {
		ws, _, err := websocket.DefaultDialer.Dial(u, nil)
		if err != nil {
			t.Fatal(err)
		}
		c := <-conns
		open, _ := proto.Marshal(&tetherv1.Open{Procedure: "/x/y"})
		_ = ws.WriteMessage(websocket.BinaryMessage, frame.Append(nil, frame.Frame{Type: frame.TypeOpen, StreamID: 1, Payload: open}))
		// The flood is for a stream that has ended: it starts once END
		// has arrived. (Started at once, it raced the handler: when its
		// goroutine ran late, the flood passed the stream's 64 KiB of
		// credit first, and the server rightly closed with 1002.)
		if typ, _ := awaitEnd(t, ws, 1); typ != frame.TypeEnd {
			t.Fatalf("stream 1 ended with %v; want END", typ)
		}
		_ = ws.SetReadDeadline(time.Time{})
		msg := frame.Append(nil, frame.Frame{Type: frame.TypeMessage, StreamID: 1, Payload: []byte("x")})
		stop := make(chan struct{})
		go func() { // the peer keeps sending small messages for the ended stream
			for {
				select {
				case <-stop:
					return
				default:
				}
				if ws.WriteMessage(websocket.BinaryMessage, msg) != nil {
					return
				}
			}
		}()
		time.Sleep(5 * time.Millisecond)
		go c.ClosePolicy(tether.Errorf(tether.CodeInternal, "bye"), "bye")
		_ = ws.SetReadDeadline(time.Now().Add(3 * time.Second))
		var code int
		for {
			if _, _, err = ws.ReadMessage(); err != nil {
				var ce *websocket.CloseError
				if errors.As(err, &ce) {
					code = ce.Code
				}
				break
			}
		}
		close(stop)
		if code != websocket.ClosePolicyViolation {
			lost++
			if lost < 4 {
				t.Logf("iteration %d: close code %d, err %v", i, code, err)
			}
		}
		ws.Close()
		<-c.Done()
	}
	if lost > 0 {
		t.Errorf("%d of %d closes: peer did not get the 1008 close frame", lost, n)
	}
}

// A client's close leaves closing the TCP connection to the server (RFC
// 6455 section 7.1.1: the server closes first, and keeps the TIME_WAIT
// that would otherwise take the client's ephemeral port): after its close
// frame the client sends no FIN, and it finishes once the server's close
// frame and FIN arrive.
func TestClientLeavesTCPCloseToServer(t *testing.T) {
	result := make(chan string, 1)
	closed := make(chan error, 1)
	cc := rawServer(t, Config{OnClose: func(err error) { closed <- err }}, func(ws *websocket.Conn) {
		ws.SetCloseHandler(func(int, string) error { return nil }) // answered below
		_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, _, err := ws.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
			result <- fmt.Sprintf("reading the client's close frame: %v", err)
			return
		}
		// Nothing may follow the close frame, not even a FIN: the wait
		// ends with a timeout (300 ms: a FIN would arrive at once).
		_ = ws.NetConn().SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := ws.NetConn().Read(make([]byte, 1))
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			result <- ""
		} else {
			result <- fmt.Sprintf("after the close frame: %d bytes, %v; want nothing (no FIN)", n, err)
		}
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(10*time.Second))
	})
	cc.Close()
	if msg := <-result; msg != "" {
		t.Fatal(msg)
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the client did not finish after the server's close frame and FIN")
	}
}

// TestReadErrorOfPeerClose: the error a peer's close frame ends the calls
// with keeps its text (the documented "connection closed by peer (code
// reason)") whether gorilla/websocket returns the close frame bare or a
// caller wraps it, and a connection's routine end costs no allocation to
// find the close frame.
func TestReadErrorOfPeerClose(t *testing.T) {
	ce := &websocket.CloseError{Code: websocket.CloseGoingAway, Text: "shutdown"}
	for _, err := range []error{ce, fmt.Errorf("read: %w", ce)} {
		got := readError(err)
		if tether.CodeOf(got) != tether.CodeUnavailable || got.Error() != "unavailable: tether: connection closed by peer (1001 shutdown)" {
			t.Errorf("readError(%v) = %v (%v)", err, got, tether.CodeOf(got))
		}
		if closeErrorOf(err) != ce {
			t.Errorf("closeErrorOf(%v) did not find the close frame", err)
		}
	}
	if closeErrorOf(io.EOF) != nil {
		t.Error("closeErrorOf(io.EOF) found a close frame")
	}
	var err error = ce
	if n := testing.AllocsPerRun(100, func() { _ = closeErrorOf(err) }); n != 0 {
		t.Errorf("closeErrorOf of a bare close frame: %v allocations", n)
	}
}
