package client

import (
	"reflect"
	"testing"
)

// TestUnaryCallRecycleClearsEveryField: Recycle zeroes unaryCall field by
// field (its stream keeps its wake-up channel: mux.Stream.Clear). A field
// added to unaryCall or spareStream must be cleared there too, or the next
// call would inherit it.
func TestUnaryCallRecycleClearsEveryField(t *testing.T) {
	fields := func(v any) []string {
		rt := reflect.TypeOf(v)
		var names []string
		for i := range rt.NumField() {
			names = append(names, rt.Field(i).Name)
		}
		return names
	}
	if got, want := fields(unaryCall{}), []string{"co", "call", "spare"}; !reflect.DeepEqual(got, want) {
		t.Errorf("unaryCall has fields %v; Recycle clears %v", got, want)
	}
	if got, want := fields(spareStream{}), []string{"cs", "st"}; !reflect.DeepEqual(got, want) {
		t.Errorf("spareStream has fields %v; Recycle clears %v", got, want)
	}
	u := &unaryCall{}
	u.co.replay = true
	u.call.key, u.call.sent = "k", 3
	u.spare.cs.keyVal[0] = "k"
	u.clear()
	if !reflect.ValueOf(u.co).IsZero() || !reflect.ValueOf(&u.call).Elem().IsZero() || !reflect.ValueOf(&u.spare.cs).Elem().IsZero() {
		t.Error("Recycle left a field of the call set")
	}
}
