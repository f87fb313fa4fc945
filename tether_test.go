package tether

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

func TestCodeNames(t *testing.T) {
	for c := CodeOK; c <= CodeUnauthenticated; c++ {
		var back Code
		if err := back.UnmarshalText([]byte(c.String())); err != nil || back != c {
			t.Fatalf("%d: %q round-trips to %d (%v)", c, c, back, err)
		}
	}
	var c Code
	if err := c.UnmarshalText([]byte("CODE_DEADLINE_EXCEEDED")); err != nil || c != CodeDeadlineExceeded {
		t.Fatalf("gRPC-style name: %v %v", c, err)
	}
	if err := c.UnmarshalText([]byte("nonsense")); err == nil {
		t.Fatal("want error")
	}
	if Code(99).String() != "code_99" {
		t.Fatal(Code(99).String())
	}
}

func TestCodeOf(t *testing.T) {
	cases := map[error]Code{
		nil:                      CodeOK,
		context.Canceled:         CodeCanceled,
		context.DeadlineExceeded: CodeDeadlineExceeded,
		errors.New("x"):          CodeUnknown,
		Errorf(CodeAborted, "x"): CodeAborted,
		fmt.Errorf("w: %w", Errorf(CodeInternal, "x")): CodeInternal,
	}
	for err, want := range cases {
		if got := CodeOf(err); got != want {
			t.Errorf("CodeOf(%v) = %v, want %v", err, got, want)
		}
	}
	e := Errorf(CodeNotFound, "gone")
	if !errors.Is(e, NewError(CodeNotFound, nil)) || errors.Is(e, NewError(CodeInternal, nil)) {
		t.Fatal("errors.Is by code")
	}
	if e.WithMeta(NewMetadata("k", "v")).Meta().Get("k") != "v" || e.Meta() != nil {
		t.Fatal("WithMeta must copy")
	}
}

func TestMetadata(t *testing.T) {
	md := NewMetadata("A", "1", "a", "2")
	if got := md.Values("a"); len(got) != 2 {
		t.Fatalf("values %v", got)
	}
	c := md.Clone()
	c.Set("a", "x")
	if md.Get("a") != "1" {
		t.Fatal("Clone shares storage")
	}
	md.Del("A")
	if len(md) != 0 {
		t.Fatal("Del")
	}
}
