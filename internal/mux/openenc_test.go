package mux

import (
	"bytes"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
)

// checkOpenEncoding checks that openSize and appendOpen write what
// proto.MarshalAppend writes for open when they say they can, and reports
// whether they did.
func checkOpenEncoding(t *testing.T, open *tetherv1.Open) bool {
	t.Helper()
	size, ok := openSize(open)
	if !ok {
		return false
	}
	want, err := proto.MarshalOptions{}.MarshalAppend([]byte("prefix"), open)
	if err != nil {
		t.Fatalf("openSize took an Open that proto refuses (%v): %v", err, open)
	}
	got := appendOpen([]byte("prefix"), open)
	if !bytes.Equal(got, want) {
		t.Fatalf("appendOpen(%v)\n got %x\nwant %x", open, got, want)
	}
	if size != len(want)-len("prefix") {
		t.Fatalf("openSize(%v) = %d, proto says %d", open, size, len(want)-len("prefix"))
	}
	return true
}

// TestOpenEncoding: the OPENs a client sends are written by hand, byte for
// byte as proto writes them; those it cannot write go through proto.
func TestOpenEncoding(t *testing.T) {
	unknown := &tetherv1.Open{Procedure: "/a/b"}
	unknown.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1))
	unknownEntry := &tetherv1.MetadataEntry{Key: "k"}
	unknownEntry.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1))
	for _, tc := range []struct {
		name   string
		open   *tetherv1.Open
		byHand bool
	}{
		{"empty", &tetherv1.Open{}, true},
		{"procedure", &tetherv1.Open{Procedure: "/example.echo.v1.EchoService/Echo"}, true},
		{"timeout", &tetherv1.Open{Procedure: "/a/b", TimeoutMicros: 1<<63 + 5}, true},
		{"metadata", &tetherv1.Open{Procedure: "/a/b", TimeoutMicros: 300, Metadata: []*tetherv1.MetadataEntry{
			{Key: "tether-idempotency-key", Values: []string{"0123456789abcdef"}},
			{Key: "x", Values: []string{"", "two", strings.Repeat("v", 300)}},
			{Key: "x-bin", BinaryValues: [][]byte{nil, {0, 0xff}, make([]byte, 200)}},
			{Key: "", Values: []string{"keyless"}},
			{},
		}}, true},
		{"nil entry", &tetherv1.Open{Procedure: "/a/b", Metadata: []*tetherv1.MetadataEntry{nil, {Key: "k"}}}, true},
		{"long procedure", &tetherv1.Open{Procedure: "/" + strings.Repeat("p", 20000)}, true},
		{"resume", &tetherv1.Open{Procedure: "/a/b", Resume: &tetherv1.Resume{Token: []byte("0123456789abcdef")}}, false},
		{"unknown fields", unknown, false},
		{"entry with unknown fields", &tetherv1.Open{Metadata: []*tetherv1.MetadataEntry{unknownEntry}}, false},
		{"procedure not UTF-8", &tetherv1.Open{Procedure: "/a/\xff"}, false},
		{"key not UTF-8", &tetherv1.Open{Metadata: []*tetherv1.MetadataEntry{{Key: "\xc3"}}}, false},
		{"value not UTF-8", &tetherv1.Open{Metadata: []*tetherv1.MetadataEntry{{Key: "k", Values: []string{"ok", "\xed\xa0\x80"}}}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := checkOpenEncoding(t, tc.open); got != tc.byHand {
				t.Fatalf("written by hand: %v, want %v", got, tc.byHand)
			}
		})
	}
}

// FuzzOpenEncoding: any Open the fuzzer builds is written by hand as proto
// writes it, or left to proto.
func FuzzOpenEncoding(f *testing.F) {
	f.Add("/a/b", "key", "value", []byte{1, 2}, uint64(0), uint8(1))
	f.Add("", "", "", []byte(nil), uint64(1<<40), uint8(0))
	f.Add("/p/\xff", "k\xc3", "v", []byte{}, uint64(7), uint8(3))
	f.Fuzz(func(t *testing.T, proc, key, value string, bin []byte, timeout uint64, entries uint8) {
		open := &tetherv1.Open{Procedure: proc, TimeoutMicros: timeout}
		for i := range int(entries % 8) {
			e := &tetherv1.MetadataEntry{Key: key[:i*len(key)/8]}
			for j := range i % 3 {
				e.Values = append(e.Values, value[j*len(value)/3:])
			}
			if i%2 == 1 {
				e.BinaryValues = append(e.BinaryValues, bin, bin[:len(bin)/2])
			}
			open.Metadata = append(open.Metadata, e)
		}
		checkOpenEncoding(t, open)
	})
}

// BenchmarkOpenEncoding: a unary call's OPEN (a procedure, the
// idempotency key, a timeout) written by proto and by hand.
func BenchmarkOpenEncoding(b *testing.B) {
	open := &tetherv1.Open{
		Procedure:     "/bench.v1.BenchService/Unary",
		TimeoutMicros: 30_000_000,
		Metadata:      []*tetherv1.MetadataEntry{{Key: "tether-idempotency-key", Values: []string{"bXh0Wl9rZXlfMDEyMzQ1Njc4OQ"}}},
	}
	buf := make([]byte, 0, 256)
	b.Run("proto", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = proto.Size(open)
			buf, _ = marshalOpts.MarshalAppend(buf[:0], open)
		}
	})
	b.Run("hand", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = openSize(open)
			buf = appendOpen(buf[:0], open)
		}
	})
}
