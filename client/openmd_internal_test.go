package client

import (
	"slices"
	"testing"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/wire"
)

// TestInlineKeySorted (issue 15): the inline idempotency key joins the
// OPEN's metadata in its sorted place, as the Go sender writes every key
// (PROTOCOL.md), whatever keys the caller gave.
func TestInlineKeySorted(t *testing.T) {
	for _, md := range []tether.Metadata{
		nil,
		{"a-first": {"1"}},
		{"x-user": {"ada"}},
		{"a-first": {"1"}, "x-user": {"ada"}},
		{"a": {"1"}, "b": {"2"}, "x": {"3"}, "y": {"4"}}, // more than the inline entries
	} {
		var s clientStream
		out := wire.MetadataToProtoInto(md, s.mdEntries[:len(s.mdEntries)-1], s.mdPtrs[:])
		if out == nil {
			out = s.mdPtrs[:0]
		}
		e := &tetherv1.MetadataEntry{Key: tether.MetadataIdempotencyKey, Values: []string{"k"}}
		out = insertSorted(out, e)
		keys := make([]string, len(out))
		for i, x := range out {
			keys[i] = x.GetKey()
		}
		if !slices.IsSorted(keys) || len(keys) != len(md)+1 || !slices.Contains(keys, tether.MetadataIdempotencyKey) {
			t.Errorf("header %v: OPEN keys %v; want the header's and the key, sorted", md, keys)
		}
	}
}
