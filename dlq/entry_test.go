package dlq

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestEncodingRoundTrip(t *testing.T) {
	full := sampleEntry("/echo.v1.EchoService/Say")
	full.ID = FormatID(7)
	full.Replays, full.LastReplay, full.LastReplayError = 3, t0.Add(time.Hour).In(time.FixedZone("X", 5*3600)), "nope"
	for _, e := range []*Entry{full, {Procedure: "/a.B/C"}} {
		b, err := MarshalEntry(e)
		if err != nil {
			t.Fatal(err)
		}
		got, err := UnmarshalEntry(b)
		if err != nil {
			t.Fatalf("decode %s: %v", b, err)
		}
		sameEntry(t, got, e)
	}
}

// TestEncodingFormat pins the stored form: changing it needs a new version.
func TestEncodingFormat(t *testing.T) {
	e := sampleEntry("/echo.v1.EchoService/Say")
	e.ID = FormatID(1)
	e.Metadata = map[string][]string{"x-user": {"ada"}}
	b, err := MarshalEntry(e)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"v":1,"id":"00000000000000000001","procedure":"/echo.v1.EchoService/Say",` +
		`"request":"CgJoaQD/","metadata":{"x-user":["ada"]},"idempotency_key":"idem-/echo.v1.EchoService/Say",` +
		`"attempts":5,"last_code":14,"last_error":"unavailable: connection refused",` +
		`"first_attempt":"2026-03-01T12:00:00.123456789Z","dead_lettered":"2026-03-01T12:00:03.123456789Z"}`
	if string(b) != want {
		t.Errorf("encoding\n got %s\nwant %s", b, want)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil || m["v"] != 1.0 {
		t.Errorf("no v:1 field: %v %v", m, err)
	}
}

func TestDecodeErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{``, "decode entry"},
		{`null`, "no version"},
		{`[]`, "decode entry"},
		{`{}`, "no version"},
		{`{"procedure":"/a.B/C"}`, "no version"},
		{`{"v":2,"procedure":"/a.B/C"}`, "unsupported encoding version 2"},
		{`{"v":2,"procedure":7}`, "unsupported encoding version 2"},
		{`{"v":"1","procedure":"/a.B/C"}`, "bad version"},
		{`{"v":1.5,"procedure":"/a.B/C"}`, "bad version"},
		{`{"v":1}`, "no procedure"},
		{`{"v":1,"procedure":"/a.B/C","attempts":-1}`, "negative attempts"},
		{`{"v":1,"procedure":"/a.B/C","replays":-2}`, "negative replays"},
		{`{"v":1,"procedure":"/a.B/C","request":"not base64!"}`, "decode entry"},
		{`{"v":1,"procedure":"/a.B/C","last_code":-1}`, "decode entry"},
		{`{"v":1,"procedure":"/a.B/C","first_attempt":"yesterday"}`, "decode entry"},
		{`{"v":1,"procedure":"/a.B/C"} trailing`, "decode entry"},
		{`{"v":1,"procedure":"/a.B/C"`, "decode entry"},
	} {
		e, err := UnmarshalEntry([]byte(tc.in))
		if err == nil {
			t.Errorf("decode %q = %+v, want an error", tc.in, e)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("decode %q: %v, want it to mention %q", tc.in, err, tc.want)
		}
	}
}

func TestDecodeIgnoresUnknownFields(t *testing.T) {
	e, err := UnmarshalEntry([]byte(`{"v":1,"procedure":"/a.B/C","added_later":{"x":1}}`))
	if err != nil {
		t.Fatal(err)
	}
	if e.Procedure != "/a.B/C" {
		t.Fatalf("decoded %+v", e)
	}
}

// FuzzDecodeEntry checks that decoding arbitrary bytes never panics, and
// that whatever it accepts encodes again and decodes to the same entry.
// Seeds are in testdata/fuzz/FuzzDecodeEntry.
func FuzzDecodeEntry(f *testing.F) {
	e := sampleEntry("/echo.v1.EchoService/Say")
	e.ID = FormatID(42)
	e.Replays, e.LastReplay, e.LastReplayError = 1, t0.Add(time.Minute), "again"
	if b, err := MarshalEntry(e); err == nil {
		f.Add(b)
	}
	f.Add([]byte(`{"v":1,"procedure":"/a.B/C"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := UnmarshalEntry(b)
		if err != nil {
			if e != nil {
				t.Fatalf("decode returned an entry with error %v", err)
			}
			return
		}
		b2, err := MarshalEntry(e)
		if err != nil {
			t.Fatalf("decoded entry %+v does not encode: %v", e, err)
		}
		e2, err := UnmarshalEntry(b2)
		if err != nil {
			t.Fatalf("re-encoded entry %s does not decode: %v", b2, err)
		}
		// Times compare by instant; the rest exactly.
		for _, p := range []struct{ a, b *time.Time }{
			{&e.FirstAttempt, &e2.FirstAttempt}, {&e.DeadLettered, &e2.DeadLettered}, {&e.LastReplay, &e2.LastReplay},
		} {
			if !p.a.Equal(*p.b) {
				t.Fatalf("time %v became %v", *p.a, *p.b)
			}
			*p.a, *p.b = time.Time{}, time.Time{}
		}
		if !reflect.DeepEqual(e, e2) {
			t.Fatalf("round trip changed the entry:\n%+v\n%+v", e, e2)
		}
	})
}
