package mux

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"unsafe"

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

// FuzzReadMessage: whatever the bytes and however they arrive, readMessage
// returns exactly the message, with large payloads on their own.
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
		buf, direct, _, err := readMessage(nil, &chunkReader{b: msg, chunks: sizes}, nil, lookAhead)
		if err != nil {
			t.Fatal(err)
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
