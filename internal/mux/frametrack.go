package mux

// Following the WebSocket frames a connection reads.
//
// A server connection's reader can see that no byte it has read waits to be
// consumed, which it must know to park (park.go): HijackPooled makes the
// WebSocket's read buffer and keeps it. A client's read buffer is
// gorilla/websocket's own (its Dialer makes it), out of reach. Instead, the
// connection under it (TrackedReads) never returns bytes past the end of the
// handshake's HTTP response or of the frame being read: gorilla's buffer,
// which it fills only through Read, then holds bytes of one frame at most,
// and none once gorilla has read a message to its end. The frameTracker
// follows the frames as their bytes pass to find those ends. A server's
// connection (HijackPooled) is tracked the same way from the first frame on,
// so that a receiver can tell that a whole message waits before it reads one
// (messageEnd: callerread_linux.go).
//
// Server-to-client frames are unmasked (RFC 6455, section 5.1): a header is
// 2, 4 or 10 bytes; client-to-server frames are masked, and their headers 4
// bytes longer. Anything else (a frame masked the wrong way, a reserved bit
// or opcode, a control frame that is fragmented or too long: what gorilla
// rejects, or the text of a proxy's response read as a frame) stops the
// tracking for good: Read then returns what it has, as an untracked
// connection does, and a client connection is never quiet, so its reader
// never parks.

// The frameTracker's states.
const (
	trackHTTP    = iota // in the handshake's HTTP response
	trackHeader         // in a frame's header (n bytes of it seen); at a frame's start when n is 0
	trackPayload        // in a frame's payload (rem bytes left)
	trackOff            // lost: not following any more
)

// A frameTracker follows the frames of the bytes a connection reads. Only
// the reader reads, so it needs no lock.
type frameTracker struct {
	state  uint8
	n      uint8    // trackHTTP: bytes of "\r\n\r\n" matched; trackHeader: header bytes seen
	need   uint8    // trackHeader: the header's length, once its second byte is seen (2 before)
	masked bool     // the frames are a client's: masked, their headers 4 bytes longer
	hdr    [14]byte // the header's bytes; the last frame's first byte stays in hdr[0] after it ends
	rem    uint64   // trackPayload: payload bytes left
}

// newFrameTracker returns a client's tracker, at the start of the
// handshake's response.
func newFrameTracker() *frameTracker { return &frameTracker{state: trackHTTP, need: 2} }

// newServerTracker returns a server's tracker, at the start of the client's
// first frame (the upgrade request was read before).
func newServerTracker() *frameTracker {
	return &frameTracker{state: trackHeader, need: 2, masked: true}
}

// consume follows b, the next bytes read, as far as the end of the HTTP
// response or of the frame they are in, and returns how many bytes of b that
// is: at least one if b is not empty. A lost tracker consumes all of b.
func (t *frameTracker) consume(b []byte) int {
	i := 0
	for i < len(b) {
		switch t.state {
		case trackHTTP:
			c := b[i]
			i++
			switch {
			case c == '\r' && (t.n == 0 || t.n == 2):
				t.n++
			case c == '\n' && (t.n == 1 || t.n == 3):
				t.n++
			case c == '\r':
				t.n = 1
			default:
				t.n = 0
			}
			if t.n == 4 {
				t.state, t.n = trackHeader, 0
				return i
			}
		case trackHeader:
			t.hdr[t.n] = b[i]
			t.n++
			i++
			if t.n == 2 {
				switch t.hdr[1] & 0x7f {
				case 126:
					t.need = 4
				case 127:
					t.need = 10
				}
				if t.masked {
					t.need += 4 // the masking key
				}
				if (t.hdr[1]&0x80 != 0) != t.masked {
					t.state = trackOff // a mask where none belongs, or none where one does
					return len(b)
				}
			}
			if t.n < t.need {
				continue
			}
			rem, ok := t.header()
			t.n, t.need = 0, 2
			if !ok {
				t.state = trackOff
				return len(b)
			}
			if rem == 0 {
				return i // a frame with no payload ends with its header
			}
			t.state, t.rem = trackPayload, rem
		case trackPayload:
			k := uint64(len(b) - i)
			if k >= t.rem {
				i += int(t.rem)
				t.state, t.rem = trackHeader, 0
				return i
			}
			i += int(k)
			t.rem -= k
		default:
			return len(b)
		}
	}
	return i
}

// header checks the header in hdr and returns its payload length, or false
// for a header that the peer must not send.
func (t *frameTracker) header() (uint64, bool) {
	b0, b1 := t.hdr[0], t.hdr[1]
	op := b0 & 0x0f
	if b0&0x70 != 0 || (b1&0x80 != 0) != t.masked || (op > 2 && op < 8) || op > 10 {
		return 0, false // a reserved bit, a mask where none belongs or none where one does, a reserved opcode
	}
	var n uint64
	switch l := b1 & 0x7f; l {
	case 126:
		n = uint64(t.hdr[2])<<8 | uint64(t.hdr[3])
	case 127:
		for _, c := range t.hdr[2:10] {
			n = n<<8 | uint64(c)
		}
		if n>>63 != 0 {
			return 0, false
		}
	default:
		n = uint64(l)
	}
	if op >= 8 && (b0&0x80 == 0 || n > 125) {
		return 0, false // a control frame fragmented or too long
	}
	return n, true
}

// atFrameStart reports whether the bytes consumed so far end a frame (or the
// handshake's response): a reader that has read them all holds none.
func (t *frameTracker) atFrameStart() bool { return t.state == trackHeader && t.n == 0 }

// messageEnd reports whether b, the bytes that follow those consumed (the
// tracker at a frame's start), hold a whole message: every frame up to and
// including a data frame that ends a message (FIN), or a close frame, after
// which gorilla/websocket reads no more. Reading that message from b alone
// then never waits for the socket. It does not change t.
func (t *frameTracker) messageEnd(b []byte) bool {
	if !t.atFrameStart() {
		return false
	}
	s := *t
	for len(b) > 0 {
		k := s.consume(b)
		b = b[k:]
		if s.state == trackOff {
			return false
		}
		if !s.atFrameStart() {
			return false // b ends inside a frame
		}
		op := s.hdr[0] & 0x0f
		if (op < 8 && s.hdr[0]&0x80 != 0) || op == 8 {
			return true
		}
	}
	return false
}
