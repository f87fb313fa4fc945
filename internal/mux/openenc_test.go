package mux

import (
	"bytes"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

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

// sampleValue is a value for field fd that is not its zero value (or, when
// zero is true and fd has presence, the zero value, which is then encoded).
func sampleValue(m protoreflect.Message, fd protoreflect.FieldDescriptor, zero bool) protoreflect.Value {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(!zero)
	case protoreflect.EnumKind:
		if zero {
			return protoreflect.ValueOfEnum(0)
		}
		return protoreflect.ValueOfEnum(1)
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		if zero {
			return protoreflect.ValueOfInt32(0)
		}
		return protoreflect.ValueOfInt32(-7)
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		if zero {
			return protoreflect.ValueOfInt64(0)
		}
		return protoreflect.ValueOfInt64(-7)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		if zero {
			return protoreflect.ValueOfUint32(0)
		}
		return protoreflect.ValueOfUint32(300)
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		if zero {
			return protoreflect.ValueOfUint64(0)
		}
		return protoreflect.ValueOfUint64(300)
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(1.5)
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(1.5)
	case protoreflect.StringKind:
		if zero {
			return protoreflect.ValueOfString("")
		}
		return protoreflect.ValueOfString("s")
	case protoreflect.BytesKind:
		if zero {
			return protoreflect.ValueOfBytes([]byte{})
		}
		return protoreflect.ValueOfBytes([]byte{1})
	case protoreflect.MessageKind, protoreflect.GroupKind:
		var sub protoreflect.Message
		if fd.IsList() {
			sub = m.NewField(fd).List().NewElement().Message()
		} else {
			sub = m.NewField(fd).Message()
		}
		fillFields(sub, fd.Message().Fields(), -1, false)
		return protoreflect.ValueOfMessage(sub)
	}
	panic("kind " + fd.Kind().String())
}

// fillFields sets field only (all fields when only < 0) of m.
func fillFields(m protoreflect.Message, fields protoreflect.FieldDescriptors, only int, zero bool) {
	for i := range fields.Len() {
		if only >= 0 && i != only {
			continue
		}
		fd := fields.Get(i)
		switch {
		case fd.IsMap():
			mp := m.Mutable(fd).Map()
			mp.Set(sampleValue(m, fd.MapKey(), zero).MapKey(), sampleValue(m, fd.MapValue(), zero))
		case fd.IsList():
			l := m.Mutable(fd).List()
			l.Append(sampleValue(m, fd, zero))
			l.Append(sampleValue(m, fd, zero))
		default:
			m.Set(fd, sampleValue(m, fd, zero))
		}
	}
}

// TestOpenEncodingEveryField walks the descriptors of Open and of
// MetadataEntry: with any one field set (and, for an entry, any one of its
// fields), openSize and appendOpen agree with proto, or (a Resume only)
// leave the Open to proto. A field added to the .proto that the hand
// encoder would leave out fails here (checked by adding one to each
// message and regenerating).
func TestOpenEncodingEveryField(t *testing.T) {
	check := func(name string, open *tetherv1.Open) {
		t.Helper()
		size, ok := openSize(open)
		if !ok {
			// Only a Resume is left to proto: a test that let every
			// Open through proto would check nothing.
			if open.Resume == nil {
				t.Errorf("%s: left to proto", name)
			}
			return
		}
		want, err := proto.MarshalOptions{}.Marshal(open)
		if err != nil {
			t.Fatalf("%s: proto refuses: %v", name, err)
		}
		if got := appendOpen(nil, open); !bytes.Equal(got, want) {
			t.Errorf("%s: appendOpen = %x, proto = %x", name, got, want)
		}
		if size != len(want) || size != proto.Size(open) {
			t.Errorf("%s: openSize = %d, proto = %d", name, size, len(want))
		}
	}
	// eachField calls f for every field, and again with the zero value
	// for a field with presence.
	eachField := func(fields protoreflect.FieldDescriptors, f func(i int, name string, zero bool)) {
		for i := range fields.Len() {
			fd := fields.Get(i)
			for _, zero := range []bool{false, true} {
				if zero && !fd.HasPresence() {
					continue
				}
				f(i, string(fd.Name())+map[bool]string{true: " (zero, present)"}[zero], zero)
			}
		}
	}
	fields := (&tetherv1.Open{}).ProtoReflect().Descriptor().Fields()
	eachField(fields, func(i int, name string, zero bool) {
		m := &tetherv1.Open{}
		fillFields(m.ProtoReflect(), fields, i, zero)
		check(name, m)
	})
	entry := (&tetherv1.MetadataEntry{}).ProtoReflect().Descriptor().Fields()
	eachField(entry, func(i int, name string, zero bool) {
		e := &tetherv1.MetadataEntry{}
		fillFields(e.ProtoReflect(), entry, i, zero)
		check("metadata."+name, &tetherv1.Open{Metadata: []*tetherv1.MetadataEntry{e}})
	})
	// Everything at once.
	all := &tetherv1.Open{}
	fillFields(all.ProtoReflect(), fields, -1, false)
	all.Resume = nil
	check("all but resume", all)
}

// TestOpenSizeNil: a nil Open is left to proto, which encodes it as an
// empty one, as before the hand encoder.
func TestOpenSizeNil(t *testing.T) {
	if _, ok := openSize(nil); ok {
		t.Fatal("openSize(nil) took a nil Open")
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
