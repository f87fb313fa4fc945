package mux

// Encoding an OPEN (clients).
//
// Every call's OPEN is a tether.v1.Open of a procedure, a few metadata
// entries (the inline idempotency key among them) and a timeout.
// proto.Size and proto.MarshalAppend walk it through the generated message's
// tables, validate every string and, for the entries, call back through the
// same machinery per element: together 12% of the client's CPU at 64
// unary calls in flight (docs/benchmarks/HISTORY.md, fourteenth pass). openSize and appendOpen write
// the same bytes directly, for every Open without a Resume and without
// unknown fields; anything else, and every Open with a string that is not
// valid UTF-8 (which proto.MarshalAppend refuses with its own error), goes
// through proto as before.

import (
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
)

// Field numbers of tether.v1.Open and tether.v1.MetadataEntry, beside
// openProcedureField (openmd.go), openMetadataField, entryValuesField and
// entryBinaryField (limits.go).
const (
	openTimeoutField = 3 // Open.timeout_micros
	entryKeyField    = 1 // MetadataEntry.key
)

// openSize returns the size of open's encoding, and whether appendOpen can
// write it: open has no Resume, no unknown fields (nor have its entries),
// and every string is valid UTF-8. When it cannot, the caller uses proto.
// The fields it knows are those of tether.v1.Open and MetadataEntry today:
// TestOpenEncodingEveryField walks their descriptors and fails when a field
// is added that the hand encoder would leave out.
func openSize(open *tetherv1.Open) (int, bool) {
	if open == nil || open.Resume != nil || len(open.ProtoReflect().GetUnknown()) > 0 {
		return 0, false
	}
	n := 0
	if p := open.Procedure; p != "" {
		if !utf8.ValidString(p) {
			return 0, false
		}
		n += 1 + protowire.SizeBytes(len(p))
	}
	for _, e := range open.Metadata {
		if !validEntryStrings(e) {
			return 0, false
		}
		n += 1 + protowire.SizeBytes(entryLen(e))
	}
	if t := open.TimeoutMicros; t != 0 {
		n += 1 + protowire.SizeVarint(t)
	}
	return n, true
}

// validEntryStrings reports whether appendOpen can write e: no unknown
// fields, every string valid UTF-8 (nil encodes as an empty entry).
func validEntryStrings(e *tetherv1.MetadataEntry) bool {
	if e == nil {
		return true
	}
	if len(e.ProtoReflect().GetUnknown()) > 0 || !utf8.ValidString(e.Key) {
		return false
	}
	for _, v := range e.Values {
		if !utf8.ValidString(v) {
			return false
		}
	}
	return true
}

// entryLen is the size of e's encoding, without its own tag and length.
func entryLen(e *tetherv1.MetadataEntry) int {
	if e == nil {
		return 0
	}
	n := 0
	if k := e.Key; k != "" {
		n += 1 + protowire.SizeBytes(len(k))
	}
	for _, v := range e.Values {
		n += 1 + protowire.SizeBytes(len(v))
	}
	for _, v := range e.BinaryValues {
		n += 1 + protowire.SizeBytes(len(v))
	}
	return n
}

// appendOpen appends open's encoding, the bytes proto.MarshalAppend makes of
// it (fields in number order), to b. open must be one that openSize said
// it can write, unchanged since.
func appendOpen(b []byte, open *tetherv1.Open) []byte {
	if p := open.Procedure; p != "" {
		b = protowire.AppendTag(b, openProcedureField, protowire.BytesType)
		b = protowire.AppendString(b, p)
	}
	for _, e := range open.Metadata {
		b = protowire.AppendTag(b, openMetadataField, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(entryLen(e)))
		if e == nil {
			continue
		}
		if k := e.Key; k != "" {
			b = protowire.AppendTag(b, entryKeyField, protowire.BytesType)
			b = protowire.AppendString(b, k)
		}
		for _, v := range e.Values {
			b = protowire.AppendTag(b, entryValuesField, protowire.BytesType)
			b = protowire.AppendString(b, v)
		}
		for _, v := range e.BinaryValues {
			b = protowire.AppendTag(b, entryBinaryField, protowire.BytesType)
			b = protowire.AppendBytes(b, v)
		}
	}
	if t := open.TimeoutMicros; t != 0 {
		b = protowire.AppendTag(b, openTimeoutField, protowire.VarintType)
		b = protowire.AppendVarint(b, t)
	}
	return b
}
