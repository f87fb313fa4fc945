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
			if err := stable(rv.Elem(), "", 0); err != nil {
				return "", ruleValue, fmt.Errorf("%w: %T: %w", ErrUnstable, p, err)
			}
			return fmt.Sprintf("%#v", p), ruleValue, nil
		}
		k, _, err := key(rv.Elem().Interface())
		return k, ruleDeref, err
	}
	if !printsItself(rv) {
		if err := stable(rv, "", 0); err != nil {
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

// Identity returns the scope that binds a caller's resumable-stream tokens,
// resume cursor seals and rate-limit buckets: the rules of Key without the
// fmt.Stringer one (a String method is often a display name or a redacted
// form that several callers share), and with the dynamic type in the
// printed form, so that UserID(5) and ServiceID(5) are two callers. A
// principal without a stable key gets a scope of its own that matches only
// the same value in the same process (what a resumable stream's token was
// bound to before this package) and never equals a stable one. Key stays
// as it is for idempotency keys, which stores shared by several versions
// hold.
func Identity(p any) string {
	switch v := p.(type) {
	case nil:
		return ""
	case string:
		return "s:" + v
	}
	rv := reflect.ValueOf(p)
	if rv.Kind() == reflect.Pointer && rv.IsNil() {
		return fmt.Sprintf("v:%T(nil)", p)
	}
	if v, ok := p.(Keyer); ok {
		if k, err := keyOf(v); err == nil {
			return "k:" + k
		}
		return unstable(p)
	}
	if rv.Kind() == reflect.Pointer && !printsItself(rv) {
		switch rv.Elem().Kind() {
		case reflect.Struct, reflect.Array, reflect.Slice, reflect.Map:
		default:
			return Identity(rv.Elem().Interface())
		}
		rv = rv.Elem()
	}
	if !printsItself(rv) {
		if err := stable(rv, "", 0); err != nil {
			return unstable(p)
		}
	}
	return fmt.Sprintf("v:%T:%#v", p, p)
}

// keyOf calls a principal's PrincipalKey method, turning a panic into an
// error.
func keyOf(v Keyer) (k string, err error) {
	defer recoverMethod(v, &err)
	return v.PrincipalKey(), nil
}

// unstable is the in-process scope of a principal without a stable key:
// its printed form, or, for a map, slice or function (which fmt could
// follow into a cycle), its type and address.
func unstable(p any) string {
	switch rv := reflect.ValueOf(p); rv.Kind() {
	case reflect.Map, reflect.Slice, reflect.Func:
		return fmt.Sprintf("unstable %T@%x", p, rv.Pointer())
	}
	return "unstable " + Legacy(p)
}

// SealForms returns what a sealed resume cursor covers of principal p:
// the first form is the one to seal with, and a seal under any of them
// verifies. Strings and stable values seal with the form earlier versions
// used (Legacy), so that servers of both versions accept each other's
// cursors; Keyers, Stringers and dereferenced pointers seal with their
// Identity, and verify the legacy form too.
func SealForms(p any) []string {
	_, r, err := key(p)
	switch {
	case err != nil:
		// Its printed form holds addresses: a seal under it verifies only
		// in this process, whatever form it takes.
		return []string{unstable(p)}
	case r == ruleNil, r == ruleString, r == ruleValue:
		return []string{Legacy(p)}
	}
	return []string{"tether principal scope " + Identity(p), Legacy(p)}
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

// maxDepth bounds how deep stable looks into a principal: a value nested
// deeper (or cyclic, through slices, maps or interfaces) has no stable key.
const maxDepth = 32

// stable reports, as an error naming where, the first part of v below the
// top level that %#v would print as an address.
func stable(v reflect.Value, path string, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("nested deeper than %d at %s", maxDepth, path)
	}
	depth++
	switch v.Kind() {
	case reflect.Struct:
		for j := range v.NumField() {
			f := v.Field(j)
			if printsItself(f) {
				continue
			}
			if err := stable(f, path+"."+v.Type().Field(j).Name, depth); err != nil {
				return err
			}
		}
	case reflect.Array, reflect.Slice:
		for j := range v.Len() {
			e := v.Index(j)
			if printsItself(e) {
				continue
			}
			if err := stable(e, fmt.Sprintf("%s[%d]", path, j), depth); err != nil {
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
				if err := stable(e, path+"[...]", depth); err != nil {
					return err
				}
			}
		}
	case reflect.Interface:
		if !v.IsNil() && !printsItself(v.Elem()) {
			return stable(v.Elem(), path, depth)
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
