package mux

// Decoding an OPEN without its metadata (servers).
//
// handleOpen, on the reader goroutine, decodes every field of an OPEN but
// the request metadata, which it only validates (as proto.Unmarshal would)
// and copies, still encoded, onto the stream (reqMD; into the stream's own
// mdBuf when it fits): most handlers never read the metadata, and decoding
// it costs an allocation per key and value. The procedure is validated and
// looked up without a string of its own: Config.Route returns the
// registered name.
// RequestMetadata decodes it when asked, on any goroutine (reqMD is
// read-only once the stream is accepted).

import (
	"errors"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
)

var mergeOpts = proto.UnmarshalOptions{Merge: true}

// openProcedureField is the field number of tether.v1.Open's procedure.
const openProcedureField = 1

// decodeOpen decodes payload into open, leaving its procedure and its
// metadata out. proc is the procedure (the last Open field 1, as
// proto.Unmarshal keeps it), still in payload, for the caller to look up
// and set (handleOpen: the registered name, without a string of its own);
// md is the metadata's encoding (the Open fields 2, as they came), appended
// to mdBuf[:0] (the stream's inline buffer when it fits), or nil. It fails
// where proto.Unmarshal of the whole payload would.
func decodeOpen(payload []byte, open *tetherv1.Open, mdBuf []byte) (proc, md []byte, err error) {
	// First pass: validate, and measure the metadata fields.
	mdBytes, skipped := 0, false
	for b := payload; len(b) > 0; {
		num, typ, n := protowire.ConsumeField(b)
		if n < 0 {
			return nil, nil, protowire.ParseError(n)
		}
		switch {
		case num == openProcedureField && typ == protowire.BytesType:
			_, _, tn := protowire.ConsumeTag(b)
			v, _ := protowire.ConsumeBytes(b[tn:n])
			if !utf8.Valid(v) {
				return nil, nil, errBadUTF8
			}
			proc, skipped = v, true
		case num == openMetadataField && typ == protowire.BytesType:
			if err := validEntry(b[:n]); err != nil {
				return nil, nil, err
			}
			mdBytes += n
			skipped = true
		}
		b = b[n:]
	}
	if !skipped {
		return nil, nil, proto.Unmarshal(payload, open)
	}
	if mdBytes > 0 {
		if mdBytes <= cap(mdBuf) {
			md = mdBuf[:0]
		} else {
			md = make([]byte, 0, mdBytes)
		}
	}
	// Second pass: the runs of other fields are merged into open (as one
	// Unmarshal of them all would), the metadata fields copied.
	run := 0 // start of the current run of other fields
	for i := 0; i < len(payload); {
		num, typ, n := protowire.ConsumeField(payload[i:])
		if (num == openMetadataField || num == openProcedureField) && typ == protowire.BytesType {
			if run < i {
				if err := mergeOpts.Unmarshal(payload[run:i], open); err != nil {
					return nil, nil, err
				}
			}
			if num == openMetadataField {
				md = append(md, payload[i:i+n]...)
			}
			run = i + n
		}
		i += n
	}
	if run < len(payload) {
		if err := mergeOpts.Unmarshal(payload[run:], open); err != nil {
			return nil, nil, err
		}
	}
	return proc, md, nil
}

var errBadUTF8 = errors.New("string field contains invalid UTF-8")

// validEntry checks one encoded Open.metadata field (tag included) as
// proto.Unmarshal would: a well-formed MetadataEntry whose key and values
// are valid UTF-8.
func validEntry(field []byte) error {
	_, _, n := protowire.ConsumeTag(field)
	entry, m := protowire.ConsumeBytes(field[n:])
	if m < 0 {
		return protowire.ParseError(m)
	}
	for len(entry) > 0 {
		num, typ, k := protowire.ConsumeField(entry)
		if k < 0 {
			return protowire.ParseError(k)
		}
		if (num == 1 || num == entryValuesField) && typ == protowire.BytesType {
			_, _, tn := protowire.ConsumeTag(entry)
			s, _ := protowire.ConsumeBytes(entry[tn:])
			if !utf8.Valid(s) {
				return errBadUTF8
			}
		}
		entry = entry[k:]
	}
	return nil
}

// RequestMetadata decodes the request metadata of the stream's OPEN
// (servers; nil for none). Each call decodes it again: callers keep the
// result.
func (s *Stream) RequestMetadata() []*tetherv1.MetadataEntry {
	if len(s.reqMD) == 0 {
		return nil
	}
	var open tetherv1.Open
	if err := proto.Unmarshal(s.reqMD, &open); err != nil {
		return nil // validated by decodeOpen: cannot happen
	}
	return open.GetMetadata()
}
