package e2e

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
	"github.com/tetherrpc/tether/server"
)

// FuzzServerConn feeds arbitrary bytes to a server after a valid WebSocket
// handshake: the input as one binary message on one connection and, if it is
// long enough, split in two messages on another. Each connection then gets a
// valid PING; the server must answer it or close the connection with a
// close code that names the fault (1002, 1003, 1008, 1009), within 2s. After
// every input the server must still answer a normal client.
//
//	go test -run='^$' -fuzz=FuzzServerConn -fuzztime=30s ./internal/e2e
//
// The seeds are in fuzzSeeds (and, as files, in testdata/fuzz/FuzzServerConn).
// With TETHER_FUZZ_STATS=<file>, every process (the coordinator and each
// worker) appends how its rounds ended and its peak RSS to that file.
func FuzzServerConn(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s.data)
	}
	hwmBefore := fuzzVmHWM()
	srv := server.New(server.WithLogger(discardLogger()))
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	hs := httptest.NewServer(srv)
	u := "ws" + strings.TrimPrefix(hs.URL, "http")
	cli, err := client.New(u, client.WithLogger(discardLogger()))
	if err != nil {
		f.Fatal(err)
	}
	health := echov1.NewEchoServiceClient(cli)
	inputs := 0
	f.Cleanup(func() {
		_ = cli.Close()
		// Every fuzz connection is gone once the server has seen it close.
		deadline := time.Now().Add(5 * time.Second)
		for srv.Stats().Connections > 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		st := srv.Stats()
		_ = srv.Close()
		hs.Close()
		hwmAfter := fuzzVmHWM()
		f.Logf("%d inputs, %d connections accepted, %d left open; rounds %s; peak RSS (VmHWM) %s before, %s after",
			inputs, st.ConnectionsAccepted, st.Connections, fuzzOutcomeSummary(), hwmBefore, hwmAfter)
		if p := os.Getenv("TETHER_FUZZ_STATS"); p != "" {
			if fh, err := os.OpenFile(p, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
				var ms runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&ms)
				fmt.Fprintf(fh, "pid=%d inputs=%d accepted=%d open=%d rounds=%s VmHWM before=%s after=%s; after GC: heap in use %d KiB, heap from OS %d KiB, goroutines %d\n",
					os.Getpid(), inputs, st.ConnectionsAccepted, st.Connections, fuzzOutcomeSummary(), hwmBefore, hwmAfter,
					ms.HeapInuse>>10, ms.HeapSys>>10, runtime.NumGoroutine())
				fh.Close()
			}
		}
		if st.Connections > 0 {
			f.Errorf("%d fuzz connections still open 5s after the last input", st.Connections)
		}
	})
	f.Fuzz(func(t *testing.T, data []byte) {
		inputs++
		t.Logf("one message: %s", fuzzRound(t, u, data))
		if len(data) > 20 {
			cut := fuzzCut(data)
			t.Logf("split at %d: %s", cut, fuzzRound(t, u, data[:cut], data[cut:]))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		res, err := health.Say(ctx, &echov1.SayRequest{Text: "alive"}, client.WithoutRetries())
		if err != nil || res.GetText() != "alive" {
			t.Fatalf("server does not answer after the input: %v %v", res, err)
		}
	})
}

// fuzzCut picks where to split an input in two messages: at the frame
// boundary nearest the middle, so that valid inputs stay valid, or in the
// middle of a frame if there is no boundary (the server must then close with
// 1002).
func fuzzCut(data []byte) int {
	best, rest := len(data)/2, data
	bestDist := len(data)
	for {
		_, next, err := frame.Parse(rest)
		if err != nil || len(next) == 0 {
			return best
		}
		at := len(data) - len(next)
		if d := max(at-len(data)/2, len(data)/2-at); d < bestDist {
			best, bestDist = at, d
		}
		rest = next
	}
}

// fuzzPing is the payload of the PING that follows every input.
const fuzzPing = 0x7465746865722121 // "tether!!"

// fuzzRound sends the messages on a fresh connection, then a PING, and
// reads until the PING's ACK or the close; it returns what happened.
func fuzzRound(t *testing.T, u string, msgs ...[]byte) string {
	t.Helper()
	d := websocket.Dialer{Subprotocols: []string{tether.Subprotocol}, HandshakeTimeout: 2 * time.Second}
	ws, _, err := d.Dial(u, nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer ws.Close()
	deadline := time.Now().Add(2 * time.Second)
	_ = ws.SetWriteDeadline(deadline)
	_ = ws.SetReadDeadline(deadline)
	for _, m := range append(msgs, secPing(fuzzPing, false)) {
		if err := ws.WriteMessage(websocket.BinaryMessage, m); err != nil {
			break // the server has closed; read its reason
		}
	}
	for {
		_, msg, err := ws.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			var ne net.Error
			switch {
			case errors.As(err, &ce):
				switch ce.Code {
				case websocket.CloseProtocolError, websocket.CloseUnsupportedData,
					websocket.ClosePolicyViolation, websocket.CloseMessageTooBig:
					fuzzOutcome(fmt.Sprint("close ", ce.Code))
					return fmt.Sprintf("closed %d %q", ce.Code, ce.Text)
				case websocket.CloseAbnormalClosure:
					// gorilla's code for a TCP close without a close frame;
					// see below.
					fuzzOutcome("dropped")
					return fmt.Sprintf("dropped: %v", err)
				}
				t.Fatalf("closed with unexpected code %d %q", ce.Code, ce.Text)
			case errors.As(err, &ne) && ne.Timeout():
				t.Fatalf("no PING ACK and no close within 2s (hang)")
			}
			// The server dropped the connection without a close frame.
			// That happens when it closes while our later messages are
			// unread (the kernel answers them with RST) and is not a
			// fault of the server. The server's close frame is also
			// best effort: it gives up after 250ms, which a fuzzing
			// machine under full load can miss.
			fuzzOutcome("dropped")
			return fmt.Sprintf("dropped: %v", err)
		}
		for len(msg) > 0 {
			fr, rest, err := frame.Parse(msg)
			if err != nil {
				t.Fatalf("server sent an invalid frame: %v (% x)", err, msg[:min(len(msg), 32)])
			}
			if fr.Type == frame.TypePing && fr.Flags&frame.FlagAck != 0 && binary.BigEndian.Uint64(fr.Payload) == fuzzPing {
				fuzzOutcome("answered")
				return "PING answered"
			}
			msg = rest
		}
	}
}

// fuzzOutcomes counts how the rounds of this process ended.
var fuzzOutcomes struct {
	sync.Mutex
	n map[string]int
}

func fuzzOutcome(what string) {
	fuzzOutcomes.Lock()
	defer fuzzOutcomes.Unlock()
	if fuzzOutcomes.n == nil {
		fuzzOutcomes.n = map[string]int{}
	}
	fuzzOutcomes.n[what]++
}

func fuzzOutcomeSummary() string {
	fuzzOutcomes.Lock()
	defer fuzzOutcomes.Unlock()
	return fmt.Sprint(fuzzOutcomes.n)
}

// fuzzVmHWM returns this process's peak resident set size from /proc.
func fuzzVmHWM() string {
	fh, err := os.Open("/proc/self/status")
	if err != nil {
		return "?"
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			return strings.Join(strings.Fields(v), " ")
		}
	}
	return "?"
}

type fuzzSeed struct {
	name string
	data []byte
}

// fuzzSeeds are the starting inputs: valid calls of each kind, and the
// protocol violations a hostile client would try first.
func fuzzSeeds() []fuzzSeed {
	say := echov1.EchoServiceSayProcedure
	hdr := func(t frame.Type, flags uint8, id uint32, length uint32) []byte {
		return frame.AppendHeader(nil, t, flags, id, int(length))
	}
	raw := func(t frame.Type, flags uint8, id uint32, payload []byte) []byte {
		return frame.Append(nil, frame.Frame{Type: t, Flags: flags, StreamID: id, Payload: payload})
	}
	unary := func(id uint32, req *echov1.SayRequest) []byte {
		return secConcat(secOpen(id, say, nil, 0), secWindow(id, 1<<18), secMessage(id, req), secHalfClose(id))
	}
	manyKeys := tether.Metadata{}
	for i := range 100 {
		manyKeys.Set(fmt.Sprintf("k%d", i), "v")
	}
	var pings, emptyFrags []byte
	for i := range 30 {
		pings = append(pings, secPing(uint64(i), false)...)
	}
	for range 50 {
		emptyFrags = append(emptyFrags, raw(frame.TypeMessage, frame.FlagMore, 1, nil)...)
	}
	// An Open whose one metadata value is not valid UTF-8, encoded by hand
	// (proto.Marshal refuses to).
	badUTF8Open := append([]byte{0x0a, byte(len(say))}, say...)
	badUTF8Open = append(badUTF8Open, 0x12, 0x07, 0x0a, 0x01, 'k', 0x12, 0x02, 0xff, 0xfe)
	return []fuzzSeed{
		{"unary-say", unary(1, &echov1.SayRequest{Text: "hi"})},
		{"unary-say-twice", secConcat(unary(1, &echov1.SayRequest{Text: "a"}), unary(3, &echov1.SayRequest{Text: "b", Payload: []byte{1, 2, 3}}))},
		{"unary-say-metadata-deadline", secConcat(
			secOpen(1, say, tether.Metadata{"x-trace": {"42"}, "tether-idempotency-key": {"k"}}, 5*time.Second),
			secMessage(1, &echov1.SayRequest{Text: "hi"}), secHalfClose(1))},
		{"unary-say-sleep-then-nothing", secConcat(secOpen(1, say, nil, 0), secMessage(1, &echov1.SayRequest{SleepMillis: 600_000}), secHalfClose(1))},
		{"unary-say-no-message", secConcat(secOpen(1, say, nil, 0), secHalfClose(1))},
		{"unary-say-two-messages", secConcat(secOpen(1, say, nil, 0), secMessage(1, &echov1.SayRequest{Text: "a"}), secMessage(1, &echov1.SayRequest{Text: "b"}), secHalfClose(1))},
		{"unary-say-fragmented", secConcat(secOpen(1, say, nil, 0),
			raw(frame.TypeMessage, frame.FlagMore, 1, []byte{0x0a}), raw(frame.TypeMessage, 0, 1, []byte{0x02, 'h', 'i'}), secHalfClose(1))},
		{"server-stream-countdown", secConcat(secOpen(1, echov1.EchoServiceCountdownProcedure, nil, 0), secWindow(1, 1<<20),
			secMessage(1, &echov1.CountdownRequest{Count: 5, Payload: []byte("xyz")}), secHalfClose(1))},
		{"server-stream-countdown-huge", secConcat(secOpen(1, echov1.EchoServiceCountdownProcedure, nil, 0), secWindow(1, 1<<30),
			secMessage(1, &echov1.CountdownRequest{Count: 1 << 30, Payload: make([]byte, 64)}), secHalfClose(1))},
		{"client-stream-collect", secConcat(secOpen(1, echov1.EchoServiceCollectProcedure, nil, 0),
			secMessage(1, &echov1.CollectRequest{Text: "a"}), secMessage(1, &echov1.CollectRequest{Text: "b"}), secHalfClose(1))},
		{"bidi-chat-then-reset", secConcat(secOpen(1, echov1.EchoServiceChatProcedure, nil, 0), secMessage(1, &echov1.ChatRequest{Text: "x"}),
			raw(frame.TypeReset, 0, 1, secMarshal(&tetherv1.Reset{Status: &tetherv1.Status{Code: tetherv1.Code_CODE_CANCELED}})))},
		{"message-after-half-close", secConcat(secOpen(1, echov1.EchoServiceChatProcedure, nil, 0), secHalfClose(1), secMessage(1, &echov1.ChatRequest{}))},
		{"window", secConcat(secOpen(1, echov1.EchoServiceChatProcedure, nil, 0), secWindow(1, 12345))},
		{"window-overflow", secConcat(secOpen(1, echov1.EchoServiceChatProcedure, nil, 0), secWindow(1, 0xffffffff), secWindow(1, 0xffffffff))},
		{"window-zero", secConcat(secOpen(1, echov1.EchoServiceChatProcedure, nil, 0), secWindow(1, 0))},
		{"fragment-then-nothing", secConcat(secOpen(1, echov1.EchoServiceCollectProcedure, nil, 0),
			raw(frame.TypeMessage, frame.FlagMore, 1, make([]byte, 1024)))},
		{"goaway-from-client", secConcat(
			raw(frame.TypeGoAway, 0, 0, secMarshal(&tetherv1.GoAway{LastStreamId: 7, Code: tetherv1.Code_CODE_UNAVAILABLE, Message: "bye"})),
			unary(1, &echov1.SayRequest{Text: "after goaway"}))},
		{"goaway-bad-payload", raw(frame.TypeGoAway, 0, 0, []byte{0xff, 0xff})},
		{"garbage", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\xfe")},
		{"truncated-header", []byte{0x01, 0x00, 0x00, 0x00}},
		{"truncated-payload", hdr(frame.TypeOpen, 0, 1, 50)},
		{"huge-length", secConcat(hdr(frame.TypeMessage, 0, 1, 0xffffffff), []byte{1, 2, 3})},
		{"length-just-over", secConcat(hdr(frame.Type(0x42), 0, 1, frame.MaxPayload+1), make([]byte, 16))},
		{"never-opened-stream", secMessage(5, &echov1.SayRequest{})},
		{"never-opened-window", secWindow(9, 100)},
		{"unknown-types", secConcat(raw(0x42, 0xff, 1, []byte("future")), raw(0x00, 0, 0, nil), raw(0xff, 0, 7, []byte{1}))},
		{"open-even-id", secOpen(2, say, nil, 0)},
		{"open-id-goes-down", secConcat(secOpen(3, say, nil, 0), secOpen(1, say, nil, 0))},
		{"open-id-zero", raw(frame.TypeOpen, 0, 0, nil)},
		{"open-max-id", secConcat(secOpen(0xffffffff, say, nil, 0), secMessage(0xffffffff, &echov1.SayRequest{}), secHalfClose(0xffffffff))},
		{"open-malformed", raw(frame.TypeOpen, 0, 1, []byte{0x0a, 0xff, 0x01})},
		{"open-invalid-utf8-metadata", raw(frame.TypeOpen, 0, 1, badUTF8Open)},
		{"open-unknown-procedure", secConcat(secOpen(1, "/no.Such/Thing", nil, 0), secMessage(1, &echov1.SayRequest{}), secHalfClose(1))},
		{"open-huge-timeout", secConcat(raw(frame.TypeOpen, 0, 1, secMarshal(&tetherv1.Open{Procedure: say, TimeoutMicros: 1 << 63})),
			secMessage(1, &echov1.SayRequest{Text: "t"}), secHalfClose(1))},
		{"open-many-keys", secOpen(1, say, manyKeys, 0)},
		{"open-flags", raw(frame.TypeOpen, 0x80, 1, nil)},
		{"headers-to-server", secConcat(secOpen(1, echov1.EchoServiceChatProcedure, nil, 0), raw(frame.TypeHeaders, 0, 1, nil))},
		{"end-to-server", secConcat(secOpen(1, echov1.EchoServiceChatProcedure, nil, 0), raw(frame.TypeEnd, 0, 1, nil))},
		{"reset-garbage", secConcat(secOpen(1, echov1.EchoServiceChatProcedure, nil, 0), raw(frame.TypeReset, 0, 1, []byte{0x0a, 0x05}))},
		{"ping-bad-size", raw(frame.TypePing, 0, 0, []byte{1, 2, 3})},
		{"ping-on-stream", raw(frame.TypePing, 0, 3, make([]byte, 8))},
		{"ping-ack-only", secPing(1, true)},
		{"ping-burst", pings},
		{"half-close-with-payload", secConcat(secOpen(1, echov1.EchoServiceChatProcedure, nil, 0), raw(frame.TypeHalfClose, 0, 1, []byte{1}))},
		{"empty-fragments", secConcat(secOpen(1, echov1.EchoServiceChatProcedure, nil, 0), emptyFrags)},
		{"empty", nil},
		// Resumable streams (PROTOCOL.md section 15).
		{"resume-countdown-acks", secConcat(resumeOpen(1, echov1.EchoServiceCountdownProcedure, &tetherv1.Resume{Token: resumeToken}), secWindow(1, 1<<20),
			secMessage(1, &echov1.CountdownRequest{Count: 50, Payload: []byte("xyz")}), secHalfClose(1),
			frame.AppendWindowAck(nil, 1, 100, 3), frame.AppendWindowAck(nil, 1, 0, 3), frame.AppendWindowAck(nil, 1, 5000, 1<<62))},
		{"resume-chat-acks", secConcat(resumeOpen(1, echov1.EchoServiceChatProcedure, &tetherv1.Resume{Token: resumeToken}),
			secMessage(1, &echov1.ChatRequest{Text: "a"}), frame.AppendWindowAck(nil, 1, 2000, 1), secMessage(1, &echov1.ChatRequest{Text: "b"}))},
		{"resume-attach-unknown", secConcat(resumeOpen(1, echov1.EchoServiceChatProcedure, &tetherv1.Resume{Token: resumeToken, Attach: true, Consumed: 7}),
			secMessage(1, &echov1.ChatRequest{Text: "a"}))},
		{"resume-attach-unary", resumeOpen(1, say, &tetherv1.Resume{Token: resumeToken, Attach: true})},
		{"resume-short-token", resumeOpen(1, echov1.EchoServiceChatProcedure, &tetherv1.Resume{Token: []byte("short")})},
		{"resume-token-twice", secConcat(resumeOpen(1, echov1.EchoServiceChatProcedure, &tetherv1.Resume{Token: resumeToken}),
			resumeOpen(3, echov1.EchoServiceChatProcedure, &tetherv1.Resume{Token: resumeToken}))},
		// Restarting from the application's cursor (PROTOCOL.md section 15).
		{"resume-cursors-open", secConcat(resumeOpen(1, echov1.EchoServiceCountdownProcedure, &tetherv1.Resume{Token: resumeToken, Cursors: true}), secWindow(1, 1<<20),
			secMessage(1, &echov1.CountdownRequest{Count: 20}), secHalfClose(1), frame.AppendWindowAck(nil, 1, 100, 20))},
		{"resume-cursor-restart", secConcat(resumeOpen(1, echov1.EchoServiceCountdownProcedure, &tetherv1.Resume{Token: resumeToken, Cursors: true, Attach: true, Consumed: 9, Cursor: []byte{0, 0, 0, 0, 0, 0, 0, 8}}),
			secMessage(1, &echov1.CountdownRequest{Count: 20}), secHalfClose(1), frame.AppendWindowAck(nil, 1, 100, 15), frame.AppendWindowAck(nil, 1, 100, 1<<40))},
		{"resume-cursor-restart-empty", secConcat(resumeOpen(1, echov1.EchoServiceCountdownProcedure, &tetherv1.Resume{Token: resumeToken, Cursors: true, Attach: true, Cursor: []byte{}}),
			secMessage(1, &echov1.CountdownRequest{Count: 3}), secHalfClose(1))},
		{"resume-cursor-too-long", resumeOpen(1, echov1.EchoServiceCountdownProcedure, &tetherv1.Resume{Token: resumeToken, Cursors: true, Attach: true, Consumed: 1, Cursor: make([]byte, 1025)})},
		{"resume-cursor-on-chat", resumeOpen(1, echov1.EchoServiceChatProcedure, &tetherv1.Resume{Token: resumeToken, Cursors: true, Attach: true, Consumed: 1, Cursor: []byte("x")})},
		{"resume-cursor-on-first-open", resumeOpen(1, echov1.EchoServiceCountdownProcedure, &tetherv1.Resume{Token: resumeToken, Cursors: true, Cursor: []byte("x")})},
		{"ack-on-plain-stream", secConcat(secOpen(1, echov1.EchoServiceChatProcedure, nil, 0), frame.AppendWindowAck(nil, 1, 4096, 1))},
	}
}

// resumeToken is a resume token of the minimum size, for seeds and tests.
var resumeToken = []byte("0123456789abcdef")

// resumeOpen is an OPEN frame for a resumable stream.
func resumeOpen(id uint32, procedure string, r *tetherv1.Resume) []byte {
	return frame.Append(nil, frame.Frame{Type: frame.TypeOpen, StreamID: id, Payload: secMarshal(&tetherv1.Open{Procedure: procedure, Resume: r})})
}
