package wire

import (
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestBinaryMetadataRoundTrip: the values of a "-bin" key are raw bytes that
// travel in binary_values and come back unchanged, even when they are not
// valid UTF-8; other keys travel in values as before.
func TestBinaryMetadataRoundTrip(t *testing.T) {
	raw := string([]byte{0xff, 0x00, 0xab, 0xfe})
	md := tether.NewMetadata("x-trace-bin", raw, "X-Trace-Bin", "", "x-text", "hello", "x-empty-bin", "")
	md["x-none-bin"] = nil
	entries := MetadataToProto(md)
	payload, err := proto.Marshal(&tetherv1.Headers{Metadata: entries})
	if err != nil {
		t.Fatalf("encode headers with raw bytes under a -bin key: %v", err)
	}
	var h tetherv1.Headers
	if err := proto.Unmarshal(payload, &h); err != nil {
		t.Fatal(err)
	}
	for _, e := range h.GetMetadata() {
		if tether.IsBinaryKey(e.GetKey()) && len(e.GetValues()) != 0 {
			t.Errorf("entry %q: string values %q, want all in binary_values", e.GetKey(), e.GetValues())
		}
		if !tether.IsBinaryKey(e.GetKey()) && len(e.GetBinaryValues()) != 0 {
			t.Errorf("entry %q: binary values for a text key", e.GetKey())
		}
	}
	got := MetadataFromProto(h.GetMetadata())
	if v := got.Values("x-trace-bin"); len(v) != 2 || v[0] != raw || v[1] != "" {
		t.Errorf("x-trace-bin = %q, want [%q \"\"]", v, raw)
	}
	if got.Get("x-text") != "hello" || len(got.Values("x-empty-bin")) != 1 || len(got.Values("x-none-bin")) != 1 {
		t.Errorf("got %q", got)
	}
}

// TestBinaryMetadataFromOtherSenders: a receiver takes an entry's values,
// then its binary values, whatever the key (a peer that put a -bin key's
// text in values, or sent both, loses nothing).
func TestBinaryMetadataFromOtherSenders(t *testing.T) {
	got := MetadataFromProto([]*tetherv1.MetadataEntry{
		{Key: "A-Bin", Values: []string{"text"}, BinaryValues: [][]byte{{1, 2}}},
		{Key: "a-bin", BinaryValues: [][]byte{{3}}},
	})
	if v := got.Values("a-bin"); len(v) != 3 || v[0] != "text" || v[1] != "\x01\x02" || v[2] != "\x03" {
		t.Errorf("a-bin = %q", v)
	}
}

// TestTextMetadataStillUTF8: invalid UTF-8 under a key without the -bin
// suffix still cannot be encoded (docs/PROTOCOL.md section 9).
func TestTextMetadataStillUTF8(t *testing.T) {
	md := tether.NewMetadata("x-text", "\xff")
	if _, err := proto.Marshal(&tetherv1.Headers{Metadata: MetadataToProto(md)}); err == nil {
		t.Error("invalid UTF-8 under a text key encoded; want an error")
	}
}

// TestMetadataToProtoInto (issue 15): with storage for its keys,
// MetadataToProtoInto gives what MetadataToProto gives without allocating
// for text keys; with too little storage it allocates as MetadataToProto.
func TestMetadataToProtoInto(t *testing.T) {
	cases := []tether.Metadata{
		nil,
		tether.NewMetadata("tether-idempotency-key", "abc"),
		tether.NewMetadata("b", "2", "a", "1", "a", "1b"),
		tether.NewMetadata("x-bin", "\xff", "y", "t"),
		tether.NewMetadata("a", "1", "b", "2", "c", "3"),
	}
	for _, md := range cases {
		var entries [2]tetherv1.MetadataEntry
		var ptrs [2]*tetherv1.MetadataEntry
		got := MetadataToProtoInto(md, entries[:], ptrs[:])
		want := MetadataToProto(md)
		if len(got) != len(want) {
			t.Fatalf("%v: %d entries, want %d", md, len(got), len(want))
		}
		for i := range want {
			if !proto.Equal(got[i], want[i]) {
				t.Errorf("%v: entry %d = %v, want %v", md, i, got[i], want[i])
			}
		}
		if len(md) > 0 && len(md) <= 2 && &got[0] != &ptrs[0] {
			t.Errorf("%v: the caller's storage was not used", md)
		}
	}
	md := tether.NewMetadata("tether-idempotency-key", "abc")
	var entries [2]tetherv1.MetadataEntry
	var ptrs [2]*tetherv1.MetadataEntry
	if n := testing.AllocsPerRun(100, func() { MetadataToProtoInto(md, entries[:], ptrs[:]) }); n != 0 {
		t.Errorf("MetadataToProtoInto of one text key: %v allocations, want 0", n)
	}
}
