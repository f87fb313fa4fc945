// Package wire converts between tether's Go types (tether.Metadata,
// *tether.Error) and the protobuf messages that travel in frames.
package wire

import (
	"errors"
	"strings"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
)

// MetadataToProto converts metadata to its wire form, keys in sorted order so
// the encoding is deterministic.
func MetadataToProto(md tether.Metadata) []*tetherv1.MetadataEntry {
	return MetadataToProtoInto(md, nil, nil)
}

// MetadataToProtoInto is MetadataToProto using the caller's storage: when md
// has at most len(entries) keys and len(ptrs) >= len(entries), the result
// is ptrs[:len(md)], pointing into entries, and nothing is allocated for
// text keys (a per-call struct can hold them; the result is valid while it
// is).
func MetadataToProtoInto(md tether.Metadata, entries []tetherv1.MetadataEntry, ptrs []*tetherv1.MetadataEntry) []*tetherv1.MetadataEntry {
	if len(md) == 0 {
		return nil
	}
	own := len(md) <= len(entries) && len(ptrs) >= len(entries)
	var out []*tetherv1.MetadataEntry
	if own {
		out = ptrs[:0]
	} else {
		out = make([]*tetherv1.MetadataEntry, 0, len(md))
	}
	for _, k := range md.Keys() {
		if !tether.IsBinaryKey(k) {
			if own {
				e := &entries[len(out)]
				e.Key, e.Values = k, md[k]
				out = append(out, e)
				continue
			}
			out = append(out, &tetherv1.MetadataEntry{Key: k, Values: md[k]})
			continue
		}
		bin := make([][]byte, len(md[k]))
		for i, v := range md[k] {
			bin[i] = []byte(v)
		}
		if len(bin) == 0 {
			bin = [][]byte{{}} // keep the key: an entry with no values is one empty value
		}
		if own {
			e := &entries[len(out)]
			e.Key, e.BinaryValues = k, bin
			out = append(out, e)
			continue
		}
		out = append(out, &tetherv1.MetadataEntry{Key: k, BinaryValues: bin})
	}
	return out
}

// MetadataFromProto converts wire metadata to tether.Metadata, lower-casing
// keys and merging repeated keys. An entry's values come first, then its
// binary values (raw bytes of a "-bin" key); an entry with neither is one
// empty value.
func MetadataFromProto(entries []*tetherv1.MetadataEntry) tether.Metadata {
	md := make(tether.Metadata, len(entries))
	for _, e := range entries {
		for _, v := range e.GetValues() {
			md.Add(e.GetKey(), v)
		}
		for _, v := range e.GetBinaryValues() {
			md.Add(e.GetKey(), string(v))
		}
		if len(e.GetValues()) == 0 && len(e.GetBinaryValues()) == 0 {
			md.Add(e.GetKey(), "")
		}
	}
	return md
}

// StatusFromError converts an error (nil for success) to a wire status.
func StatusFromError(err error) *tetherv1.Status {
	if err == nil {
		return &tetherv1.Status{}
	}
	e := tether.AsError(err)
	return &tetherv1.Status{
		Code:    tetherv1.Code(e.Code()),
		Message: strings.ToValidUTF8(e.Message(), "\uFFFD"),
		Details: e.Details(),
	}
}

// ErrorFromStatus converts a wire status to an error: nil for OK, otherwise a
// *tether.Error carrying the code, message, details and trailers.
func ErrorFromStatus(st *tetherv1.Status, trailers tether.Metadata) error {
	if st.GetCode() == tetherv1.Code_CODE_OK {
		return nil
	}
	var msgErr error
	if st.GetMessage() != "" {
		msgErr = errors.New(st.GetMessage())
	}
	e := tether.NewError(tether.Code(st.GetCode()), msgErr)
	for _, d := range st.GetDetails() {
		_ = e.AddDetail(d)
	}
	if len(trailers) > 0 {
		e = e.WithMeta(trailers)
	}
	return e
}
