package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"

	benchv1 "github.com/tetherrpc/tether/bench/gen/bench/v1"
)

// RawMuxPath is the Raw server's minimal multiplexer (rawMux).
const RawMuxPath = "/mux"

// The minimal multiplexer: a reference for the design tether, grpc-go and
// connect-go share for streams, over a gorilla/websocket connection with
// its defaults. Each stream has a goroutine that blocks in its
// receive; one reader goroutine per connection hands each message to its
// stream over a channel; one writer goroutine per connection yields once
// before it takes the queue (as tether's and grpc-go's writers do, so that
// concurrent streams share a write) and writes it as one WebSocket message.
// A frame is a stream id and a length (4 bytes each, big-endian) and the
// payload; the server starts a stream's goroutine at its first frame. There
// is nothing else: no flow control, deadlines, metadata, errors, ends or
// limits. The application work is the bidi scenario's: each side decodes
// every message into a new benchv1.Payload and encodes its answer (the
// client its next request) straight into the write queue.
//
// It is written the plain way with gorilla/websocket's own API and
// defaults (4 KiB buffers, WriteMessage, which copies each batch into its
// buffer and masks it on the client), where tether frames its own writes;
// so it is a reference for the design, not a lower bound on it.
//
// It is a measuring stick, not a transport, used on loopback only: a
// stream that does not receive holds up the reader once 16 of its frames
// wait (until the connection is closed), the write queue has no bound (a
// Send never waits), a peer can make the server start goroutines without
// bound, and a stream is never ended. Its goroutines end with the
// connection: the reader when a read fails or Close stops its wait, the
// writer and the server's stream goroutines when the reader has ended.

const rawMuxHeader = 8

// rawMuxConn is one end of a minimal multiplexer connection.
type rawMuxConn struct {
	ws *websocket.Conn

	wmu   sync.Mutex
	wbuf  []byte // frames queued for the writer
	spare []byte // the writer's other buffer
	wake  chan struct{}

	smu     sync.Mutex
	streams map[uint32]chan []byte
	nextID  uint32
	closed  chan struct{} // closed when the reader has ended
	readErr error         // set before closed is closed

	done       chan struct{} // closed by close: the reader stops waiting for a stream
	closeOnce  sync.Once
	writerDone chan struct{} // closed when writeLoop has returned
}

func newRawMuxConn(ws *websocket.Conn) *rawMuxConn {
	return &rawMuxConn{
		ws:         ws,
		wake:       make(chan struct{}, 1),
		streams:    make(map[uint32]chan []byte),
		closed:     make(chan struct{}),
		done:       make(chan struct{}),
		writerDone: make(chan struct{}),
	}
}

// errRawMuxClosed is a Send's error once the connection has ended.
var errRawMuxClosed = errors.New("bench: raw mux: connection closed")

// close ends the connection: the socket is closed and a reader waiting for
// a stream to take a frame stops waiting.
func (c *rawMuxConn) close() {
	c.closeOnce.Do(func() {
		close(c.done)
		_ = c.ws.Close()
	})
}

// send queues p as a frame of stream id and wakes the writer.
func (c *rawMuxConn) send(id uint32, p *benchv1.Payload) error {
	c.wmu.Lock()
	select {
	case <-c.closed:
		c.wmu.Unlock()
		return errRawMuxClosed
	default:
	}
	start := len(c.wbuf)
	c.wbuf = append(c.wbuf, make([]byte, rawMuxHeader)...)
	b, err := proto.MarshalOptions{}.MarshalAppend(c.wbuf, p)
	if err != nil {
		c.wbuf = c.wbuf[:start]
		c.wmu.Unlock()
		return err
	}
	binary.BigEndian.PutUint32(b[start:], id)
	binary.BigEndian.PutUint32(b[start+4:], uint32(len(b)-start-rawMuxHeader))
	c.wbuf = b
	c.wmu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return nil
}

// writeLoop writes what is queued until the connection closes.
func (c *rawMuxConn) writeLoop() {
	defer close(c.writerDone)
	for {
		select {
		case <-c.wake:
		case <-c.closed:
			return
		}
		runtime.Gosched()
		c.wmu.Lock()
		buf := c.wbuf
		c.wbuf, c.spare = c.spare[:0], nil
		c.wmu.Unlock()
		if len(buf) > 0 {
			if err := c.ws.WriteMessage(websocket.BinaryMessage, buf); err != nil {
				c.close()
				return
			}
		}
		c.wmu.Lock()
		c.spare = buf[:0]
		c.wmu.Unlock()
	}
}

// readLoop hands each frame to its stream until the connection fails;
// accept, when not nil, is called for a frame of a stream not seen before
// and returns that stream's channel.
func (c *rawMuxConn) readLoop(accept func(id uint32) chan []byte) {
	var scratch []byte
	var err error
	defer func() {
		c.smu.Lock()
		c.readErr = err
		close(c.closed)
		for id, ch := range c.streams {
			close(ch)
			delete(c.streams, id)
		}
		c.smu.Unlock()
	}()
	for {
		if scratch, err = RawRead(c.ws, scratch); err != nil {
			return
		}
		// One buffer per WebSocket message, shared by its frames: a
		// stream's goroutine may still decode its payload when the next
		// message arrives.
		msg := append([]byte(nil), scratch...)
		for len(msg) > 0 {
			if len(msg) < rawMuxHeader {
				err = errors.New("bench: raw mux: short frame header")
				return
			}
			id := binary.BigEndian.Uint32(msg)
			n := binary.BigEndian.Uint32(msg[4:])
			if uint64(n) > uint64(len(msg)-rawMuxHeader) {
				err = errors.New("bench: raw mux: short frame")
				return
			}
			payload := msg[rawMuxHeader : rawMuxHeader+n : rawMuxHeader+n]
			msg = msg[rawMuxHeader+n:]
			c.smu.Lock()
			ch := c.streams[id]
			if ch == nil && accept != nil {
				ch = accept(id)
				c.streams[id] = ch
			}
			c.smu.Unlock()
			if ch != nil {
				select {
				case ch <- payload:
				case <-c.done:
					err = errRawMuxClosed
					return
				}
			}
		}
	}
}

// rawMuxServe is the minimal multiplexer's server: every stream answers
// each message it receives with a new Payload of the same body (echo, as
// every system's Bidi handler does). It returns once the connection and
// all of its goroutines have ended.
func rawMuxServe(w http.ResponseWriter, r *http.Request) {
	ws, err := rawUpgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	c := newRawMuxConn(ws)
	go c.writeLoop()
	var streams sync.WaitGroup
	c.readLoop(func(id uint32) chan []byte {
		in := make(chan []byte, 16)
		streams.Go(func() {
			for b := range in {
				req := new(benchv1.Payload)
				if proto.Unmarshal(b, req) != nil || c.send(id, echo(req)) != nil {
					c.close() // the reader stops waiting for this stream
					return
				}
			}
		})
		return in
	})
	c.close()
	<-c.writerDone
	streams.Wait()
}

// RawMuxConn is the client end of a connection to the minimal multiplexer
// (RawMuxPath on a Raw server): its bidi streams are the reference the bidi
// scenarios compare tether with.
type RawMuxConn struct{ c *rawMuxConn }

// RawMuxURL is the URL of the minimal multiplexer of the Raw server whose
// target (Server.Targets) is target.
func RawMuxURL(target string) string {
	return strings.TrimSuffix(target, RawPath) + RawMuxPath
}

// DialRawMux connects to the minimal multiplexer at rawURL (RawMuxURL), a
// loopback address.
func DialRawMux(ctx context.Context, rawURL string) (*RawMuxConn, error) {
	ws, err := DialRaw(ctx, rawURL)
	if err != nil {
		return nil, err
	}
	c := newRawMuxConn(ws)
	go c.writeLoop()
	go c.readLoop(nil)
	return &RawMuxConn{c: c}, nil
}

// Bidi opens a stream.
func (m *RawMuxConn) Bidi() BidiStream {
	c := m.c
	c.smu.Lock()
	defer c.smu.Unlock()
	c.nextID++
	in := make(chan []byte, 16)
	select {
	case <-c.closed: // the reader has ended: so has every stream
		close(in)
	default:
		c.streams[c.nextID] = in
	}
	return &rawMuxStream{c: c, id: c.nextID, in: in}
}

// Close closes the connection and waits for its reader and writer
// goroutines to end; every stream's Recv then returns the frames it had
// already received, then fails.
func (m *RawMuxConn) Close() error {
	m.c.close()
	<-m.c.closed
	<-m.c.writerDone
	return nil
}

type rawMuxStream struct {
	c  *rawMuxConn
	id uint32
	in chan []byte
}

func (s *rawMuxStream) Send(p *benchv1.Payload) error { return s.c.send(s.id, p) }

func (s *rawMuxStream) Recv() (*benchv1.Payload, error) {
	b, ok := <-s.in
	if !ok {
		if err := s.c.readErr; err != nil {
			return nil, err
		}
		return nil, io.EOF
	}
	p := new(benchv1.Payload)
	if err := proto.Unmarshal(b, p); err != nil {
		return nil, err
	}
	return p, nil
}

// Close does nothing: a minimal multiplexer's stream has no end.
func (s *rawMuxStream) Close() error { return nil }
