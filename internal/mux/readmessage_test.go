package mux

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
	"weak"

	"github.com/gorilla/websocket"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
)

// chunkReader returns b in reads of at most the sizes in chunks, in turn,
// and records how many bytes each read was offered.
type chunkReader struct {
	b      []byte
	chunks []int
	i      int
	into   []readInto
}

// readInto records a read: where to and how many bytes.
type readInto struct {
	p *byte
	n int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := len(p)
	if len(r.chunks) > 0 {
		n = min(n, max(1, r.chunks[r.i%len(r.chunks)]))
		r.i++
	}
	n = copy(p, r.b[:min(n, len(r.b))])
	r.b = r.b[n:]
	r.into = append(r.into, readInto{&p[0], n})
	return n, nil
}

// joinDirect puts the payloads readMessage read on their own back into buf.
func joinDirect(buf []byte, direct []directPayload) []byte {
	var out []byte
	pos := 0
	for _, d := range direct {
		out = append(out, buf[pos:d.off+frame.HeaderSize]...)
		out = append(out, d.sl.buf...)
		pos = d.off + frame.HeaderSize
	}
	return append(out, buf[pos:]...)
}

// TestReadMessageLargePayloadsOnTheirOwn (issue 15): the payload of a large
// MESSAGE frame is read straight into a pooled buffer of its own, not into
// the message buffer and copied out of it (one 64 KiB copy per message on
// the receiver of 64 KiB messages); the frames around it are read into the
// message buffer as before.
func TestReadMessageLargePayloadsOnTheirOwn(t *testing.T) {
	big := fill(7, frame.MaxPayload)
	var msg []byte
	msg = frame.Append(msg, frame.Frame{Type: frame.TypeWindow, StreamID: 3, Payload: []byte{0, 0, 1, 0}})
	msg = frame.Append(msg, frame.Frame{Type: frame.TypeMessage, Flags: frame.FlagMore, StreamID: 5, Payload: big})
	msg = frame.Append(msg, frame.Frame{Type: frame.TypeMessage, StreamID: 5, Payload: []byte{1, 2, 3, 4}})
	msg = frame.Append(msg, frame.Frame{Type: frame.TypeMessage, StreamID: 7, Payload: big[:minBig]})
	r := &chunkReader{b: msg}
	buf, direct, large, err := readMessage(make([]byte, 0, 4096), r, nil, true)
	if err != nil || !large {
		t.Fatalf("large %v, error %v", large, err)
	}
	if len(direct) != 2 {
		t.Fatalf("%d payloads read on their own, want 2 (the 64 KiB and the 32 KiB one)", len(direct))
	}
	if got := joinDirect(buf, direct); !bytes.Equal(got, msg) {
		t.Fatalf("message of %d bytes read as %d different bytes", len(msg), len(got))
	}
	if want := 4*frame.HeaderSize + 4 + 4; len(buf) != want {
		t.Errorf("message buffer holds %d bytes, want %d (the headers and small payloads)", len(buf), want)
	}
	if c := cap(direct[0].sl.buf); c < frame.MaxPayload+adoptRoom || c > 2*frame.MaxPayload {
		t.Errorf("a first fragment's buffer has capacity %d, want room for %d more, within twice", c, adoptRoom)
	}
	// At most readAheadSize bytes of a large payload go through the
	// message buffer: every other byte is read into the payload's own.
	viaBuf := 0
	for _, in := range r.into {
		own := false
		for _, d := range direct {
			b := d.sl.buf
			start, p := uintptr(unsafe.Pointer(&b[0])), uintptr(unsafe.Pointer(in.p))
			own = own || p >= start && p < start+uintptr(len(b))
		}
		if !own {
			viaBuf += in.n
		}
	}
	if copied := viaBuf - len(buf); copied > 2*readAheadSize {
		t.Errorf("%d bytes of large payloads read into the message buffer (and copied out), want at most %d", copied, 2*readAheadSize)
	}
}

// TestReadMessageTruncatedAndBadFrames: a message that ends inside a large
// frame, or whose frames make no sense, is read whole into the message
// buffer, where frame.Parse reports what is wrong, as before.
func TestReadMessageTruncatedAndBadFrames(t *testing.T) {
	big := fill(3, frame.MaxPayload)
	full := frame.Append(nil, frame.Frame{Type: frame.TypeMessage, StreamID: 5, Payload: big})
	tooLong := frame.AppendHeader(nil, frame.TypeMessage, 0, 5, frame.MaxPayload+1)
	tooLong = append(tooLong, big...)
	badFlags := frame.Append(nil, frame.Frame{Type: frame.TypeMessage, Flags: 0x80, StreamID: 5, Payload: big})
	noStream := frame.Append(nil, frame.Frame{Type: frame.TypeMessage, StreamID: 0, Payload: big})
	for name, tc := range map[string]struct {
		msg  []byte
		want error
	}{
		"truncated payload": {full[:len(full)-100], frame.ErrShortFrame},
		"only a header":     {full[:frame.HeaderSize], frame.ErrShortFrame},
		"too long":          {tooLong, frame.ErrTooLarge},
		"unknown flag":      {badFlags, frame.ErrFlags},
		"stream 0":          {noStream, frame.ErrStreamID},
	} {
		for _, lookAhead := range []bool{false, true} {
			buf, direct, _, err := readMessage(nil, &chunkReader{b: tc.msg, chunks: []int{1000}}, nil, lookAhead)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if len(direct) != 0 || !bytes.Equal(buf, tc.msg) {
				t.Errorf("%s: not read whole into the message buffer", name)
			}
			if _, _, err := frame.Parse(buf); !errors.Is(err, tc.want) {
				t.Errorf("%s: Parse: %v, want %v", name, err, tc.want)
			}
		}
	}
}

// budgetReader returns b in reads of random sizes, sometimes with io.EOF
// on the last bytes, and between reads takes or gives back the whole of
// maxDirectPending at random, as other connections would.
type budgetReader struct {
	b    []byte
	rng  *rand.Rand
	full bool
}

func (r *budgetReader) Read(p []byte) (int, error) {
	if full := r.rng.IntN(3) == 0; full != r.full {
		if full {
			directPending.Add(maxDirectPending)
		} else {
			directPending.Add(-maxDirectPending)
		}
		r.full = full
	}
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b[:min(len(p), 1+r.rng.IntN(70000), len(r.b))])
	r.b = r.b[n:]
	if len(r.b) == 0 && r.rng.IntN(2) == 0 {
		return n, io.EOF
	}
	return n, nil
}

// walkMessage parses buf and direct as readLoop does.
func walkMessage(buf []byte, direct []directPayload) ([]frame.Frame, error) {
	var out []frame.Frame
	pos, next := 0, 0
	for pos < len(buf) {
		if next < len(direct) && direct[next].off == pos {
			h := buf[pos : pos+frame.HeaderSize]
			out = append(out, frame.Frame{Type: frame.TypeMessage, Flags: h[1], StreamID: binary.BigEndian.Uint32(h[2:6]), Payload: direct[next].sl.buf})
			next++
			pos += frame.HeaderSize
			continue
		}
		f, rest, err := frame.Parse(buf[pos:])
		if err != nil {
			return out, err
		}
		out = append(out, f)
		pos = len(buf) - len(rest)
	}
	if next != len(direct) {
		return out, io.ErrShortBuffer
	}
	return out, nil
}

// TestReadMessageFallbackMidMessage: the bound on payloads being read on
// their own fills and empties at random between reads (other connections
// take and give it back), in messages of mixed frames, some cut short:
// every message comes back exactly, its frames parse as readLoop parses
// them, and every reservation is given back.
func TestReadMessageFallbackMidMessage(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	base := directPending.Load()
	ownPayloads, mixed := 0, 0
	for iter := range 1500 {
		var msg []byte
		var want []frame.Frame
		boundary := map[int]bool{0: true}
		for range 1 + rng.IntN(8) {
			f := frame.Frame{Type: frame.TypeWindow, StreamID: 3, Payload: []byte{0, 0, 1, 0}}
			if rng.IntN(3) > 0 {
				size := rng.IntN(frame.MaxPayload + 1)
				if rng.IntN(2) == 0 {
					size = minBig + rng.IntN(frame.MaxPayload-minBig+1)
				}
				f = frame.Frame{Type: frame.TypeMessage, Flags: uint8(rng.IntN(2)), StreamID: 5, Payload: fill(uint64(iter), size)}
			}
			msg = frame.Append(msg, f)
			boundary[len(msg)] = true
			want = append(want, f)
		}
		cut := len(msg)
		if rng.IntN(4) == 0 {
			cut = rng.IntN(len(msg))
		}
		br := &budgetReader{b: msg[:cut], rng: rng}
		buf, direct, _, err := readMessage(make([]byte, 0, 4096), br, nil, rng.IntN(2) == 0)
		if br.full {
			directPending.Add(-maxDirectPending)
		}
		if n := directPending.Load() - base; n != 0 {
			t.Fatalf("message %d: %d bytes still reserved", iter, n)
		}
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(joinDirect(buf, direct), msg[:cut]) {
			t.Fatalf("message %d: read back different", iter)
		}
		got, err := walkMessage(buf, direct)
		if cut == len(msg) {
			if err != nil || len(got) != len(want) {
				t.Fatalf("message %d: %d frames, error %v; want %d", iter, len(got), err, len(want))
			}
			for i := range got {
				if got[i].Type != want[i].Type || got[i].Flags != want[i].Flags || got[i].StreamID != want[i].StreamID || !bytes.Equal(got[i].Payload, want[i].Payload) {
					t.Fatalf("message %d: frame %d differs", iter, i)
				}
			}
		} else if err == nil && !boundary[cut] {
			t.Fatalf("message %d: cut inside a frame, parsed without error", iter)
		}
		ownPayloads += len(direct)
		if len(direct) > 0 && len(buf) > len(direct)*frame.HeaderSize+minBig {
			mixed++ // a large payload read into buf next to ones read on their own
		}
		for _, d := range direct {
			putBig(d.sl)
		}
	}
	if ownPayloads == 0 || mixed == 0 {
		t.Fatalf("%d payloads read on their own, %d messages mixing them with large payloads in the buffer: the test does not cover the fallback", ownPayloads, mixed)
	}
}

// errAfterReader returns b in reads of at most chunk bytes, then err: a
// transport that fails in the middle of a message.
type errAfterReader struct {
	b     []byte
	chunk int
	err   error
}

func (r *errAfterReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, r.err
	}
	n := copy(p, r.b[:min(len(p), r.chunk, len(r.b))])
	r.b = r.b[n:]
	return n, nil
}

// TestReadMessageTransportErrorMidPayload: an error other than io.EOF in
// the middle of a payload is the connection's, whatever the frame's size:
// io.ErrUnexpectedEOF too, which crypto/tls returns when TCP ends inside a
// record (a payload read on its own once took it for a message ending
// inside its frame, a protocol error).
func TestReadMessageTransportErrorMidPayload(t *testing.T) {
	small := frame.Append(nil, frame.Frame{Type: frame.TypeMessage, StreamID: 5, Payload: fill(3, 20000)})
	large := frame.Append(nil, frame.Frame{Type: frame.TypeMessage, StreamID: 5, Payload: fill(3, frame.MaxPayload)})
	base := directPending.Load() // other connections of this test process may hold some
	for _, lookAhead := range []bool{false, true} {
		for name, msg := range map[string][]byte{"small": small[:10000], "large": large[:30000]} {
			_, _, _, err := readMessage(nil, &errAfterReader{b: msg, chunk: 1000, err: io.ErrUnexpectedEOF}, nil, lookAhead)
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("%s frame cut by the transport, look-ahead %v: error %v, want io.ErrUnexpectedEOF", name, lookAhead, err)
			}
			if n := directPending.Load() - base; n != 0 {
				t.Fatalf("%d bytes still reserved for payloads being read", n)
			}
		}
	}
}

// TestReadMessageDirectBounded: the buffers of payloads still being read
// on their own are bounded per process (a peer that sends a large frame's
// header and trickles would otherwise make each connection hold twice the
// payload for a 24-byte header); beyond the bound the payload is read into
// the message buffer, whole and correct.
func TestReadMessageDirectBounded(t *testing.T) {
	msg := frame.Append(nil, frame.Frame{Type: frame.TypeMessage, StreamID: 5, Payload: fill(4, frame.MaxPayload)})
	// Take what is left of the bound but less than a payload's worth, as
	// other connections would, without disturbing what they hold.
	base := directPending.Load()
	taken := maxDirectPending - base - frame.MaxPayload
	directPending.Add(taken)
	buf, direct, _, err := readMessage(nil, &chunkReader{b: msg}, nil, true)
	directPending.Add(-taken)
	if err != nil {
		t.Fatal(err)
	}
	if len(direct) != 0 || !bytes.Equal(buf, msg) {
		t.Fatalf("%d payloads read on their own beyond the bound; want the message whole in the message buffer", len(direct))
	}
	buf, direct, _, err = readMessage(nil, &chunkReader{b: msg}, nil, true)
	if err != nil || len(direct) != 1 || !bytes.Equal(joinDirect(buf, direct), msg) {
		t.Fatalf("within the bound: %d payloads on their own, error %v; want 1", len(direct), err)
	}
	if n := directPending.Load() - base; n != 0 {
		t.Fatalf("%d bytes still reserved once the payload has arrived", n)
	}
}

// TestIdleReaderHoldsNoLargeBuffers: once a message's large payloads have
// been put back to the pool (here: for a stream that has ended), the
// reader waiting for the next message keeps none of them reachable, so
// that the garbage collector frees them when the pool lets them go.
func TestIdleReaderHoldsNoLargeBuffers(t *testing.T) {
	const frames, size = 30, 33000
	sent := make(chan struct{})
	cc := rawServer(t, Config{}, func(ws *websocket.Conn) {
		if _, _, err := ws.ReadMessage(); err != nil { // the OPEN
			return
		}
		writeFrames(t, ws, frame.Frame{Type: frame.TypeEnd, StreamID: 1, Payload: okEnd})
		var fs []frame.Frame
		for range frames {
			fs = append(fs, frame.Frame{Type: frame.TypeMessage, StreamID: 1, Payload: fill(9, size)})
		}
		writeFrames(t, ws, fs...)
		close(sent)
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				return
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	drainBigPools()
	s, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, []byte("go"), true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.RecvMsg(); err != io.EOF {
		t.Fatalf("RecvMsg: %v", err)
	}
	<-sent
	want := uint64(frames * (size + frame.HeaderSize))
	waitFor(t, 10*time.Second, "the message read", func() bool { return cc.BytesIn() >= want })
	time.Sleep(50 * time.Millisecond) // the reader is back waiting
	var pooled []weak.Pointer[slab]
	for i := range bigPools {
		for v := bigPools[i].Get(); v != nil; v = bigPools[i].Get() {
			pooled = append(pooled, weak.Make(v.(*slab)))
		}
	}
	if len(pooled) == 0 {
		t.Fatal("no large buffer went back to the pool")
	}
	runtime.GC()
	runtime.GC()
	alive := 0
	for _, w := range pooled {
		if w.Value() != nil {
			alive++
		}
	}
	if alive > 0 {
		t.Errorf("%d of %d large buffers put back to the pool stay reachable while the reader waits", alive, len(pooled))
	}
}

// cutListener hands each accepted connection to conns, wrapped in a
// cutConn.
type cutListener struct {
	net.Listener
	conns chan *cutConn
}

func (l *cutListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	cc := &cutConn{Conn: c}
	cc.budget.Store(-1)
	select {
	case l.conns <- cc:
	default:
	}
	return cc, nil
}

// cutConn closes the TCP connection once budget more bytes are written
// (-1: never), in the middle of whatever TLS record is being written.
type cutConn struct {
	net.Conn
	budget atomic.Int64
}

func (c *cutConn) Write(p []byte) (int, error) {
	if b := c.budget.Load(); b >= 0 {
		if int64(len(p)) > b {
			_, _ = c.Conn.Write(p[:b])
			_ = c.Conn.Close()
			return 0, io.ErrClosedPipe
		}
		c.budget.Add(-int64(len(p)))
	}
	return c.Conn.Write(p)
}

// TestTLSCutInsideLargeFrame: over TLS, the TCP connection ends in the
// middle of a large MESSAGE frame. The call fails as for any lost
// connection (unavailable: retries and dead-letter policies count it as a
// delivery failure), not as a protocol error (internal).
func TestTLSCutInsideLargeFrame(t *testing.T) {
	cl := make(chan *cutConn, 1)
	var up websocket.Upgrader
	hs := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		if _, _, err := ws.ReadMessage(); err != nil { // the OPEN
			return
		}
		c := <-cl
		c.budget.Store(3000)
		_ = ws.WriteMessage(websocket.BinaryMessage, frame.Append(nil, frame.Frame{Type: frame.TypeMessage, StreamID: 1, Payload: fill(1, 60000)}))
	}))
	hs.Listener = &cutListener{Listener: hs.Listener, conns: cl}
	hs.StartTLS()
	defer hs.Close()
	d := websocket.Dialer{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	ws, _, err := d.Dial("wss"+strings.TrimPrefix(hs.URL, "https"), nil)
	if err != nil {
		t.Fatal(err)
	}
	cc := New(ws, RoleClient, Config{})
	defer func() { cc.Close(); <-cc.Done() }()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/a/b"}, []byte("go"), true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err = s.RecvMsg(); tether.CodeOf(err) != tether.CodeUnavailable {
		t.Errorf("connection lost inside a large frame over TLS: %v (code %v), want unavailable", err, tether.CodeOf(err))
	}
}

// FuzzReadMessage: whatever the bytes and however they arrive, readMessage
// returns exactly the message, with large payloads on their own, and
// gives back what it reserved for them. Its seeds are large (a payload is
// read on its own from 32 KiB): run it with -fuzzminimizetime=0, or the
// fuzzer spends its time minimizing them.
func FuzzReadMessage(f *testing.F) {
	big := fill(5, frame.MaxPayload)
	two := frame.Append(nil, frame.Frame{Type: frame.TypeMessage, Flags: frame.FlagMore, StreamID: 1, Payload: big[:40000]})
	two = frame.Append(two, frame.Frame{Type: frame.TypeMessage, StreamID: 1, Payload: big[:10]})
	f.Add(two, []byte{7, 200, 255}, true)
	f.Add(two, []byte{30}, false)
	f.Add(two[:len(two)-3], []byte{1}, true)
	f.Add(frame.Append(nil, frame.Frame{Type: frame.TypePing, Payload: big[:8]}), []byte{3}, true)
	f.Add([]byte{3, 0, 0, 0, 0, 1, 0, 0, 128, 0, 1, 2}, []byte{}, false)
	f.Fuzz(func(t *testing.T, msg, chunks []byte, lookAhead bool) {
		var sizes []int
		for _, c := range chunks {
			sizes = append(sizes, int(c)*int(c))
		}
		base := directPending.Load()
		buf, direct, _, err := readMessage(nil, &chunkReader{b: msg, chunks: sizes}, nil, lookAhead)
		if err != nil {
			t.Fatal(err)
		}
		if n := directPending.Load() - base; n != 0 {
			t.Fatalf("%d bytes still reserved for payloads being read", n)
		}
		if got := joinDirect(buf, direct); !bytes.Equal(got, msg) {
			t.Fatalf("message of %d bytes read as %d different bytes", len(msg), len(got))
		}
		for _, d := range direct {
			if len(d.sl.buf) < minBig || cap(d.sl.buf) > 2*len(d.sl.buf) {
				t.Fatalf("payload of %d bytes on its own, in a buffer of %d", len(d.sl.buf), cap(d.sl.buf))
			}
		}
	})
}
