package mux

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
)

// TestDecodeOpenMatchesUnmarshal (issue 15): decodeOpen, which leaves the
// metadata encoded for RequestMetadata, gives the same OPEN as
// proto.Unmarshal, whatever the order of the fields, and fails where it
// fails.
func TestDecodeOpenMatchesUnmarshal(t *testing.T) {
	full := &tetherv1.Open{
		Procedure:     "/t.S/M",
		TimeoutMicros: 1500,
		Metadata: []*tetherv1.MetadataEntry{
			{Key: "a", Values: []string{"1", "2"}},
			{Key: "b-bin", BinaryValues: [][]byte{{0xff, 0}}},
		},
		Resume: &tetherv1.Resume{Token: []byte("tok"), Cursors: true},
	}
	ordered, err := proto.Marshal(full)
	if err != nil {
		t.Fatal(err)
	}
	// The same fields, metadata first and last, others between.
	md, _ := proto.Marshal(&tetherv1.Open{Metadata: full.Metadata[:1]})
	md2, _ := proto.Marshal(&tetherv1.Open{Metadata: full.Metadata[1:]})
	rest, _ := proto.Marshal(&tetherv1.Open{Procedure: full.Procedure, TimeoutMicros: full.TimeoutMicros})
	res, _ := proto.Marshal(&tetherv1.Open{Resume: full.Resume})
	shuffled := append(append(append(append([]byte{}, md...), rest...), md2...), res...)
	// A procedure given twice: the last one counts, as for proto.Unmarshal.
	other, _ := proto.Marshal(&tetherv1.Open{Procedure: "/t.S/Other"})
	twice := append(append([]byte{}, other...), shuffled...)
	noProc, _ := proto.Marshal(&tetherv1.Open{TimeoutMicros: 7})
	for name, payload := range map[string][]byte{"ordered": ordered, "shuffled": shuffled, "no metadata": rest, "procedure twice": twice, "no procedure": noProc} {
		var want tetherv1.Open
		if err := proto.Unmarshal(payload, &want); err != nil {
			t.Fatal(err)
		}
		for _, bufSize := range []int{0, 8, mdBufSize} {
			var got tetherv1.Open
			buf := make([]byte, bufSize)
			proc, raw, err := decodeOpen(payload, &got, buf)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if len(got.Metadata) != 0 || got.Procedure != "" {
				t.Errorf("%s: decodeOpen decoded the metadata or the procedure", name)
			}
			if len(raw) > 0 && len(raw) <= bufSize && &raw[0] != &buf[0] {
				t.Errorf("%s: %d bytes of metadata not in a buffer of %d", name, len(raw), bufSize)
			}
			got.Procedure = string(proc)
			got.Metadata = (&Stream{reqMD: raw}).RequestMetadata()
			if !proto.Equal(&got, &want) {
				t.Errorf("%s: decodeOpen + RequestMetadata = %v, want %v", name, &got, &want)
			}
		}
	}
	badProc := protowire.AppendTag(append([]byte{}, rest...), openProcedureField, protowire.BytesType)
	badProc = protowire.AppendBytes(badProc, []byte{'/', 0xff})
	if proto.Unmarshal(badProc, new(tetherv1.Open)) == nil {
		t.Fatal("proto.Unmarshal accepted a procedure of invalid UTF-8")
	}
	if _, _, err := decodeOpen(badProc, new(tetherv1.Open), nil); err == nil {
		t.Error("decodeOpen accepted a procedure of invalid UTF-8")
	}

	// Invalid UTF-8 in a key or a value, or a truncated entry: proto.Unmarshal
	// fails, so must decodeOpen.
	badKey := protowire.AppendTag(nil, 1, protowire.BytesType)
	badKey = protowire.AppendBytes(badKey, []byte{0xff})
	badValue := protowire.AppendTag(nil, 2, protowire.BytesType)
	badValue = protowire.AppendBytes(badValue, []byte{0xc0})
	truncated := protowire.AppendTag(nil, 1, protowire.BytesType)
	truncated = append(truncated, 5, 'a')
	for name, entry := range map[string][]byte{"key": badKey, "value": badValue, "truncated": truncated} {
		payload := protowire.AppendTag(append([]byte{}, rest...), openMetadataField, protowire.BytesType)
		payload = protowire.AppendBytes(payload, entry)
		if err := proto.Unmarshal(payload, new(tetherv1.Open)); err == nil {
			t.Fatalf("%s: proto.Unmarshal accepted it", name)
		}
		if _, _, err := decodeOpen(payload, new(tetherv1.Open), nil); err == nil {
			t.Errorf("%s: decodeOpen accepted an OPEN that proto.Unmarshal refuses", name)
		}
	}
}

// TestRequestMetadataLazy (issue 15): the handler's OPEN comes without its
// metadata, decoded only when the handler asks (Stream.RequestMetadata).
func TestRequestMetadataLazy(t *testing.T) {
	type seen struct {
		decoded int
		md      []*tetherv1.MetadataEntry
	}
	got := make(chan seen, 1)
	scfg := Config{Accept: func(s *Stream, open *tetherv1.Open) {
		got <- seen{len(open.GetMetadata()), s.RequestMetadata()}
		_ = s.Finish(nil, nil)
	}}
	cc, _ := pair(t, scfg, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	md := []*tetherv1.MetadataEntry{{Key: "k", Values: []string{"v"}}}
	if _, _, err := cc.Open(ctx, &tetherv1.Open{Procedure: "/t.S/M", Metadata: md}, nil, false); err != nil {
		t.Fatal(err)
	}
	s := <-got
	if s.decoded != 0 {
		t.Errorf("Accept's OPEN has %d metadata entries decoded, want none", s.decoded)
	}
	if len(s.md) != 1 || !proto.Equal(s.md[0], md[0]) {
		t.Errorf("RequestMetadata = %v, want %v", s.md, md)
	}
}
