// Package principal turns the principal an Authenticator returned
// (server.Identity.Principal) into a scope: a string that names the same
// caller in every process and after every restart. The idempotency
// interceptor scopes its keys by it, a server's resumable streams bind their
// tokens to it, and sealed resume cursors cover it, so that one definition
// decides, in all three places, whether two connections belong to the same
// caller.
//
// The rules, in order (Key):
//
//   - nil: "" (unauthenticated callers share one scope).
//   - a string s: "s:" + s.
//   - a value with a method PrincipalKey() string (Keyer): "k:" + its result.
//     This is the explicit choice, and the one to make for principals that
//     hold pointers, maps of pointers or times read from a database.
//   - a fmt.Stringer: its dynamic type (%T) + ":" + String().
//   - any other value: its %#v form, when that form is stable: the value
//     holds no non-nil pointer, channel, function or unsafe pointer below
//     its top level (a pointer at the top level to a struct, array, slice or
//     map is printed by value, so *User keys as the User it points to; a
//     top-level pointer to anything else is dereferenced), or only such ones
//     that fmt prints through a GoString or Format method (time.Time). A
//     value that does not pass has no stable scope: Key returns an error
//     that names the first pointer found.
//   - a nil pointer, whatever its methods: its %#v form, "(*pkg.User)(nil)".
//
// A PrincipalKey or String method that panics gives an error, not a crash.
//
// These are the forms the idempotency interceptor used before this package
// for strings, Stringers and pointer-free values, so stored keys written by
// earlier versions stay valid for them.
package principal

import (
	"errors"
	"fmt"
	"reflect"
)

// Keyer is implemented by principals that name their scope themselves.
// PrincipalKey must return the same string for the same caller in every
// process, and different strings for different callers.
type Keyer interface {
	PrincipalKey() string
}

// ErrUnstable is returned (wrapped) by Key for a principal whose printed
// form holds a pointer: it would name an address, not a caller.
var ErrUnstable = errors.New("principal has no stable key")

// Key returns the scope of principal p (see the package documentation), or
// an error wrapping ErrUnstable.
func Key(p any) (string, error) {
	k, _, err := key(p)
	return k, err
}

// How key named a principal.
type rule int

const (
	ruleNil rule = iota
	ruleString
	ruleKeyer
	ruleStringer
	ruleValue // %#v of a stable value (legacy form)
	ruleDeref // a top-level pointer to a non-composite, dereferenced
)

func key(p any) (k string, r rule, err error) {
	rv := reflect.ValueOf(p)
	nilPtr := rv.Kind() == reflect.Pointer && rv.IsNil()
	switch v := p.(type) {
	case nil:
		return "", ruleNil, nil
	case string:
		return "s:" + v, ruleString, nil
	case Keyer:
		if !nilPtr {
			defer recoverMethod(p, &err)
			return "k:" + v.PrincipalKey(), ruleKeyer, nil
		}
	case fmt.Stringer:
		if !nilPtr {
			defer recoverMethod(p, &err)
			return fmt.Sprintf("%T:%s", v, v.String()), ruleStringer, nil
		}
	}
	if nilPtr {
		// "(*pkg.User)(nil)": one scope for the type's nil pointer.
		return fmt.Sprintf("%#v", p), ruleValue, nil
	}
	if rv.Kind() == reflect.Pointer && !rv.IsNil() && !printsItself(rv) {
		switch rv.Elem().Kind() {
		case reflect.Struct, reflect.Array, reflect.Slice, reflect.Map:
			// fmt prints these by value at the top level: "&pkg.User{...}".
			if err := stable(rv.Elem(), ""); err != nil {
				return "", ruleValue, fmt.Errorf("%w: %T: %w", ErrUnstable, p, err)
			}
			return fmt.Sprintf("%#v", p), ruleValue, nil
		}
		k, _, err := key(rv.Elem().Interface())
		return k, ruleDeref, err
	}
	if !printsItself(rv) {
		if err := stable(rv, ""); err != nil {
			return "", ruleValue, fmt.Errorf("%w: %T: %w", ErrUnstable, p, err)
		}
	}
	return fmt.Sprintf("%#v", p), ruleValue, nil
}

// recoverMethod turns a panic in a principal's PrincipalKey or String
// method into an error.
func recoverMethod(p any, err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("%w: %T: its key method panicked: %v", ErrUnstable, p, r)
	}
}

// Scope returns Key(p), or, for a principal without a stable key, a scope
// of its own built from its printed form: that form holds addresses, so it
// matches only the same principal value in the same process (what a
// resumable stream's token was bound to before this package). It never
// equals a stable key.
func Scope(p any) string {
	k, err := Key(p)
	if err != nil {
		return "unstable " + Legacy(p)
	}
	return k
}

// SealForms returns what a sealed resume cursor covers of principal p:
// the first form is the one to seal with, and a seal under any of them
// verifies. Strings and stable values seal with the form earlier versions
// used (Legacy), so that servers of both versions accept each other's
// cursors; Keyers, Stringers and dereferenced pointers seal with their
// scope, and verify the legacy form too.
func SealForms(p any) []string {
	k, r, err := key(p)
	switch {
	case err != nil, r == ruleNil, r == ruleString, r == ruleValue:
		return []string{Legacy(p)}
	}
	return []string{"tether principal scope " + k, Legacy(p)}
}

var (
	goStringer = reflect.TypeFor[fmt.GoStringer]()
	formatter  = reflect.TypeFor[fmt.Formatter]()
)

// printsItself reports whether fmt prints v with %#v through a method of
// its own (GoString or Format), which it can call only on values it can
// reach through exported fields.
func printsItself(v reflect.Value) bool {
	return v.IsValid() && v.CanInterface() && (v.Type().Implements(goStringer) || v.Type().Implements(formatter))
}

// stable reports, as an error naming where, the first part of v below the
// top level that %#v would print as an address.
func stable(v reflect.Value, path string) error {
	switch v.Kind() {
	case reflect.Struct:
		for j := range v.NumField() {
			f := v.Field(j)
			if printsItself(f) {
				continue
			}
			if err := stable(f, path+"."+v.Type().Field(j).Name); err != nil {
				return err
			}
		}
	case reflect.Array, reflect.Slice:
		for j := range v.Len() {
			e := v.Index(j)
			if printsItself(e) {
				continue
			}
			if err := stable(e, fmt.Sprintf("%s[%d]", path, j)); err != nil {
				return err
			}
		}
	case reflect.Map:
		it := v.MapRange()
		for it.Next() {
			for _, e := range []reflect.Value{it.Key(), it.Value()} {
				if printsItself(e) {
					continue
				}
				if err := stable(e, path+"[...]"); err != nil {
					return err
				}
			}
		}
	case reflect.Interface:
		if !v.IsNil() && !printsItself(v.Elem()) {
			return stable(v.Elem(), path)
		}
	case reflect.Pointer, reflect.Chan, reflect.Func, reflect.UnsafePointer:
		if !v.IsNil() {
			if path == "" {
				path = "the value"
			}
			return fmt.Errorf("a %s at %s", v.Kind(), path)
		}
	}
	return nil
}

// Legacy returns the printed form (%T:%#v) that resume cursors sealed
// before this package covered, for a principal as the resumer held it:
// itself when comparable, else its own %T:%#v form.
func Legacy(p any) string {
	if p != nil && !reflect.TypeOf(p).Comparable() {
		p = fmt.Sprintf("%T:%#v", p, p)
	}
	return fmt.Sprintf("%T:%#v", p, p)
}
