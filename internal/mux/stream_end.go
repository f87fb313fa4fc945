package mux

// How a stream ends.
//
// FinishWith, on a server handler's goroutine, queues the END (with
// headers and the last message when they fit) holding sendMu. The reader
// goroutine ends a client's stream on END (handleEnd → finish) and either
// side's on RESET (handleReset → terminate). Reset is safe from any
// goroutine; closeWith (lifecycle.go) terminates every stream when the
// connection closes.
//
// terminate and finish end a stream once (finished, under mu): they close
// done if someone made it (doneLocked), wake Header, the receiver and the
// sender, and take the stream out
// of the table (remove: its slot token, then the connection's mu);
// terminate also cancels a server stream's context. sendReset queues a
// RESET with writeUrgent.
//
// Locks: in FinishWith, sendMu → wmu → the connection's mu (releaseRunning
// and unlink run inside the write); terminate and finish take mu alone,
// then the connection's mu after releasing it.

import (
	"context"
	"io"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
	"github.com/tetherrpc/tether/internal/wire"
)

// Finish ends the stream with a status (servers): nil for OK, or the error,
// with trailers. It is a no-op on a stream that has already ended.
func (s *Stream) Finish(callErr error, trailers tether.Metadata) error {
	return s.FinishWith(nil, nil, callErr, trailers)
}

// ErrCallFinished is the cause a server stream ends with when its handler
// finished the call (Finish, FinishWith): what its context and OnEnd's
// notifier are told.
var ErrCallFinished = tether.Errorf(tether.CodeCanceled, "tether: call finished")

// FinishWith ends the stream like Finish, first sending headers (when not
// empty) and a last message (when not nil). When they fit the stream's
// credit, headers, message and END leave in one write: a unary response
// costs one syscall.
func (s *Stream) FinishWith(headers tether.Metadata, last []byte, callErr error, trailers tether.Metadata) error {
	var hdr []byte
	if len(headers) > 0 {
		var err error
		if hdr, err = s.encodeHeaders(headers); err != nil {
			// The call must still end: without the headers, and with
			// the reason if it was going to succeed.
			hdr, last = nil, nil
			if callErr == nil {
				callErr = err
			}
		}
	}
	var end *tetherv1.End
	size := len(okEnd)
	if callErr != nil || len(trailers) > 0 {
		end = &tetherv1.End{Status: wire.StatusFromError(callErr), Trailers: wire.MetadataToProto(trailers)}
		size = proto.Size(end)
	}
	if limit := s.c.sendHeaderLimit(); end != nil && size+metadataCost(end.GetTrailers()) > limit {
		// Keep the code; drop what does not fit, and say so where the
		// operator will see it.
		s.c.cfg.Logger.Warn("tether: status and trailers over the peer's header limit; message, details and trailers dropped",
			"peer", s.c.RemoteAddr(), "stream", s.id, "code", tether.Code(end.GetStatus().GetCode()).String(), "bytes", size+metadataCost(end.GetTrailers()), "limit", limit)
		end = &tetherv1.End{Status: &tetherv1.Status{Code: end.GetStatus().GetCode(), Message: "tether: status and trailers too large; details dropped"}}
		if size = proto.Size(end); size > limit {
			end.Status.Message = "" // the code alone: a few bytes
			size = proto.Size(end)
		}
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	s.mu.Lock()
	if s.finished || s.sendErr != nil {
		s.mu.Unlock()
		return nil
	}
	inline := last == nil || len(last) <= frame.MaxPayload && len(last)+FrameOverhead <= s.sendCredit
	if last != nil && inline {
		s.sendCredit -= len(last) + FrameOverhead
	}
	s.mu.Unlock()
	if last != nil && len(last) > s.c.cfg.MaxMessageSize {
		return tether.Errorf(tether.CodeResourceExhausted, "tether: message of %d bytes exceeds the limit of %d", len(last), s.c.cfg.MaxMessageSize)
	}
	if !inline {
		// Too big for one write: headers and message first, with flow
		// control, then END.
		if hdr != nil {
			if err := s.writeHeaders(hdr); err != nil {
				return err
			}
			hdr = nil
		}
		s.sendMu.Unlock()
		err := s.SendMsg(s.Context(), last)
		s.sendMu.Lock()
		if err != nil {
			return err
		}
		last = nil
	}
	s.mu.Lock()
	s.halfClosed = true
	s.mu.Unlock()
	// The stream's context may be canceled already (deadline); END must
	// still go out, so only the stream ending or the connection stop it.
	id := s.id
	err := s.c.writeAlone(context.Background(), s, &id, func(b []byte) []byte {
		if hdr != nil {
			b = frame.Append(b, frame.Frame{Type: frame.TypeHeaders, StreamID: s.id, Payload: hdr})
		}
		if last != nil {
			b = frame.AppendHeader(b, frame.TypeMessage, 0, s.id, len(last))
			b = append(b, last...)
		}
		if s.c.role == RoleServer {
			// Before END can be read: the client may open its next
			// stream at once.
			s.c.releaseRunning(s)
			// Out of the table before END can be read too: once the
			// client has read END, what it sends for the stream is for
			// an ended stream, ignored without flow-control accounting
			// (PROTOCOL.md section 4). terminate, below, would come too
			// late if this goroutine ran late.
			s.c.unlink(s)
		}
		start := len(b)
		b = frame.AppendHeader(b, frame.TypeEnd, 0, s.id, size)
		if end == nil {
			return append(b, okEnd...)
		}
		var merr error
		if b, merr = marshalOpts.MarshalAppend(b, end); merr != nil {
			// Trailers that cannot be encoded (invalid UTF-8): the call
			// must still end, so send the status alone and say why.
			code := end.GetStatus().GetCode()
			if code == tetherv1.Code_CODE_OK {
				code = tetherv1.Code_CODE_INTERNAL
			}
			fallback := &tetherv1.End{Status: &tetherv1.Status{Code: code, Message: "tether: response trailers could not be encoded: " + merr.Error()}}
			b = frame.AppendHeader(b[:start], frame.TypeEnd, 0, s.id, proto.Size(fallback))
			b, _ = marshalOpts.MarshalAppend(b, fallback)
		}
		return b
	})
	if tether.CodeOf(callErr) == tether.CodeOK {
		s.terminate(ErrCallFinished, false)
	} else {
		s.terminate(callErr, false)
	}
	if err == errStreamDone {
		return nil
	}
	return err
}

// okEnd is the END payload of a successful call without trailers
// (tether.v1.End{status: {}}): sent and recognised without marshalling.
var okEnd = []byte{0x0a, 0x00}

// Reset aborts the stream: the peer gets a RESET with err's code and
// message, local senders and receivers get err. No-op once finished.
func (s *Stream) Reset(err error) {
	if s.terminate(err, true) {
		s.c.sendReset(s.id, err, false)
	}
}

// ResetUnprocessed ends the stream like Reset, with the RESET's unprocessed
// flag set: the server side's application code did nothing the call asked
// for, and the client may retry it anywhere (PROTOCOL.md, "RESET
// unprocessed"). Only a server's refusal before its handler ran may use it.
func (s *Stream) ResetUnprocessed(err error) {
	if s.terminate(err, true) {
		s.c.sendReset(s.id, err, true)
	}
}

func (c *Conn) sendReset(id uint32, err error, notProcessed bool) {
	payload, _ := proto.Marshal(resetPayload(err, notProcessed))
	c.writeUrgent(func(b []byte) []byte {
		return frame.Append(b, frame.Frame{Type: frame.TypeReset, StreamID: id, Payload: payload})
	})
}

func resetPayload(err error, notProcessed bool) *tetherv1.Reset {
	e := tether.AsError(err)
	return &tetherv1.Reset{
		Status:      &tetherv1.Status{Code: tetherv1.Code(e.Code()), Message: strings.ToValidUTF8(e.Message(), "\uFFFD")},
		Unprocessed: notProcessed,
	}
}

// terminate ends the stream locally with err. It reports whether this call
// ended it (so that the caller may tell the peer).
func (s *Stream) terminate(err error, local bool) bool {
	s.mu.Lock()
	if s.finished {
		// Ended by the peer's END with messages still queued (finish):
		// the application gave up on them. They are dropped (reads
		// return err), so that the window's growth can go back to the
		// connection.
		if s.recvQ.len() > 0 {
			s.recvEnd = err
			s.recvQ.reset()
			s.assembly = nil
		}
		s.releaseGrowthLocked()
		s.mu.Unlock()
		return false
	}
	s.finished = true
	if s.recvEnd == nil || s.recvEnd == io.EOF && s.c.role == RoleServer {
		s.recvEnd = err
		s.recvQ.reset()
		s.assembly = nil
	}
	s.uncharge()
	s.releaseGrowthLocked()
	if s.sendErr == nil {
		s.sendErr = err
	}
	if !s.headersSet {
		s.headersSet = true
		s.closeHeadersLocked()
	}
	wake := s.sendNotify
	cancelCtx := s.cancelCtx
	if cancelCtx == nil {
		s.ctxCause = err // for a context made later (Stream.Context)
	}
	onEnd := s.endedLocked(err)
	done := s.done // none is made from now on (doneLocked)
	recv := s.recvNotify
	s.mu.Unlock()
	if done != nil {
		close(done)
	}
	if cancelCtx != nil {
		cancelCtx(err)
	}
	if onEnd != nil {
		onEnd.StreamEnded(err)
	}
	s.c.remove(s)
	s.c.cutReceiver(s) // a receiver reading the connection waits no longer
	notify(recv)
	notify(wake)
	return true
}

// finish ends a stream whose END arrived: queued messages stay readable.
func (s *Stream) finish() {
	s.mu.Lock()
	if s.finished {
		s.mu.Unlock()
		return
	}
	s.finished = true
	s.uncharge()
	if s.recvQ.len() == 0 {
		// With messages queued, the growth stays charged until they are
		// read (RecvMsg) or dropped (terminate): the queue may hold the
		// whole grown window, and giving its growth back now would let
		// the next stream grow while this one still holds it.
		s.releaseGrowthLocked()
	}
	if !s.headersSet {
		s.headersSet = true
		s.closeHeadersLocked()
	}
	wake := s.sendNotify
	cause := s.recvEnd // the END's status (io.EOF for OK), set before finish
	if cause == nil {
		cause = io.EOF
	}
	onEnd := s.endedLocked(cause)
	done := s.done // none is made from now on (doneLocked)
	recv := s.recvNotify
	s.mu.Unlock()
	if done != nil {
		close(done)
	}
	s.c.remove(s)
	notify(recv)
	notify(wake)
	if onEnd != nil {
		onEnd.StreamEnded(cause)
	}
}
