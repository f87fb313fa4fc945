package principal

import (
	"errors"
	"fmt"
	"strings"
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
		ia, ib, ic := Identity(a[j]), Identity(b[j]), Identity(c[j])
		if ia != ib || strings.HasPrefix(ia, "unstable ") {
			t.Errorf("%T: same value, identities %q and %q", a[j], ia, ib)
		}
		if _, ok := a[j].(*int); !ok && ia == ic {
			t.Errorf("%T: different values, one identity %q", a[j], ia)
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
// where; Identity binds to its printed form, which never equals a stable key.
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
		if s := Identity(p); !strings.HasPrefix(s, "unstable ") {
			t.Errorf("Identity(%T) = %q", p, s)
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

type (
	userID    int
	serviceID int
)

// redacted is a principal whose String method hides who it is, as a
// logging-friendly claims type does.
type redacted struct{ Sub string }

func (redacted) String() string { return "claims{redacted}" }

// Identity keeps types apart and does not trust String methods: callers
// that print alike are still different callers for resume tokens, cursor
// seals and rate limits.
func TestIdentityTypesAndStringers(t *testing.T) {
	ids := map[string]any{}
	for _, p := range []any{userID(5), serviceID(5), int64(5), redacted{"ada"}, redacted{"bob"}, &redacted{"ada"}, "5"} {
		id := Identity(p)
		if q, dup := ids[id]; dup {
			t.Errorf("%#v and %#v share identity %q", p, q, id)
		}
		ids[id] = p
	}
	if Identity(&redacted{"ada"}) != Identity(&redacted{"ada"}) {
		t.Error("two pointers to equal values: different identities")
	}
	if got, want := Identity(&keyedUser{Name: "ada"}), "k:user/ada"; got != want {
		t.Errorf("Identity of a Keyer = %q, want %q", got, want)
	}
}

// A cyclic or absurdly deep principal has no stable key and does not crash
// the process.
func TestCyclicPrincipal(t *testing.T) {
	s := []any{nil}
	s[0] = s
	if _, err := Key(s); !errors.Is(err, ErrUnstable) {
		t.Errorf("Key of a cyclic slice: %v", err)
	}
	if id := Identity(s); !strings.HasPrefix(id, "unstable ") {
		t.Errorf("Identity of a cyclic slice = %q", id)
	}
	m := map[string]any{}
	m["m"] = m
	if _, err := Key(m); !errors.Is(err, ErrUnstable) {
		t.Errorf("Key of a cyclic map: %v", err)
	}
	if id := Identity(m); !strings.HasPrefix(id, "unstable ") {
		t.Errorf("Identity of a cyclic map = %q", id)
	}
}

// What a rate limiter pays per call: a string principal against a pointer
// to a struct (printed) and a Keyer.
func BenchmarkIdentity(b *testing.B) {
	type user struct {
		ID    string
		Roles []string
		Attrs map[string]string
	}
	for _, tc := range []struct {
		name string
		p    any
	}{
		{"string", "u-123"},
		{"struct-pointer", &user{ID: "u-123", Roles: []string{"admin", "dev"}, Attrs: map[string]string{"org": "acme"}}},
		{"keyer", &keyedUser{Name: "ada"}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				_ = Identity(tc.p)
			}
		})
	}
}

// A cyclic principal's seal form does not crash either.
func TestCyclicPrincipalSeal(t *testing.T) {
	s := []any{nil}
	s[0] = s
	if f := SealForms(s); len(f) != 1 || !strings.HasPrefix(f[0], "unstable ") {
		t.Errorf("SealForms of a cyclic slice = %q", f)
	}
}
