package principal

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type org struct{ ID int }

type plainUser struct {
	Name  string
	Roles []string
	Seen  time.Time
	Meta  map[string]int
	Gone  *org // nil: prints (*principal.org)(nil)
}

type ptrUser struct {
	Name string
	Org  *org
}

type keyedUser struct {
	Name string
	Org  *org
}

func (u *keyedUser) PrincipalKey() string { return "user/" + u.Name }

type named struct{ id, secret string }

func (n named) String() string { return n.id }

type id int

// Two allocations of the same value key alike; different values differ.
func TestKeyByValue(t *testing.T) {
	seen := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	mk := func(name string) []any {
		n := 7
		return []any{
			&plainUser{Name: name, Roles: []string{"a"}, Seen: seen, Meta: map[string]int{"x": 1, "y": 2}},
			plainUser{Name: name},
			&keyedUser{Name: name, Org: &org{ID: 1}},
			named{id: name},
			&n,
			id(len(name)),
			[2]string{name, "x"},
		}
	}
	a, b, c := mk("ada"), mk("ada"), mk("bobby")
	for j := range a {
		ka, err := Key(a[j])
		if err != nil {
			t.Fatalf("%T: %v", a[j], err)
		}
		kb, _ := Key(b[j])
		kc, _ := Key(c[j])
		if ka != kb {
			t.Errorf("%T: same value, keys %q and %q", a[j], ka, kb)
		}
		if _, ok := a[j].(*int); !ok && ka == kc {
			t.Errorf("%T: different values, one key %q", a[j], ka)
		}
		if Scope(a[j]) != ka {
			t.Errorf("%T: Scope %q, Key %q", a[j], Scope(a[j]), ka)
		}
	}
}

// The forms earlier versions stored stay exactly as they were.
func TestKeyKeepsEarlierForms(t *testing.T) {
	u := &plainUser{Name: "ada"}
	for _, tc := range []struct {
		p    any
		want string
	}{
		{nil, ""},
		{"ada", "s:ada"},
		{named{id: "ada"}, "principal.named:ada"},
		{u, fmt.Sprintf("%#v", u)},
		{id(3), "3"},
		{&keyedUser{Name: "ada"}, "k:user/ada"},
	} {
		if got, err := Key(tc.p); err != nil || got != tc.want {
			t.Errorf("Key(%#v) = %q, %v; want %q", tc.p, got, err, tc.want)
		}
	}
	// Cursor seals of strings and plain values are as before too.
	for _, p := range []any{nil, "ada", u, plainUser{Name: "ada", Roles: []string{"r"}}} {
		if f := SealForms(p); len(f) != 1 || f[0] != Legacy(p) {
			t.Errorf("SealForms(%#v) = %q", p, f)
		}
	}
	if Legacy("ada") != `string:"ada"` {
		t.Errorf("Legacy = %q", Legacy("ada"))
	}
}

// A principal that holds a pointer has no stable key: Key says so and
// where; Scope binds to its printed form, which never equals a stable key.
func TestKeyRefusesPointers(t *testing.T) {
	for _, p := range []any{
		&ptrUser{Name: "ada", Org: &org{}},
		ptrUser{Name: "ada", Org: &org{}},
		[]any{"x", &org{}},
		map[string]*org{"x": {}},
		struct{ C chan int }{make(chan int)},
	} {
		_, err := Key(p)
		if !errors.Is(err, ErrUnstable) {
			t.Errorf("Key(%T) err = %v", p, err)
			continue
		}
		if s := Scope(p); len(s) < 9 || s[:9] != "unstable " {
			t.Errorf("Scope(%T) = %q", p, s)
		}
	}
	_, err := Key(&ptrUser{Org: &org{}})
	if want := "principal has no stable key: *principal.ptrUser: a ptr at .Org"; err == nil || err.Error() != want {
		t.Errorf("err = %v, want %s", err, want)
	}
}

type panicky struct{}

func (*panicky) PrincipalKey() string { panic("no key") }

// A nil pointer keys by its type; a key method that panics is an error,
// not a crash.
func TestKeyNilAndPanics(t *testing.T) {
	var u *keyedUser
	var n *named
	for _, p := range []any{u, n} {
		if k, err := Key(p); err != nil || k != fmt.Sprintf("%#v", p) {
			t.Errorf("Key(%#v) = %q, %v", p, k, err)
		}
	}
	if _, err := Key(&panicky{}); !errors.Is(err, ErrUnstable) {
		t.Errorf("panicking PrincipalKey: %v", err)
	}
}
