package tether_test

import (
	"errors"
	"fmt"
	"log"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tetherrpc/tether"
)

func ExampleNewError() {
	err := tether.NewError(tether.CodeNotFound, errors.New("no such account"))
	// Any protobuf message travels as a typed detail.
	if derr := err.AddDetail(durationpb.New(0)); derr != nil {
		log.Fatal(derr)
	}
	fmt.Println(err)
	fmt.Println(tether.CodeOf(err), len(err.Details()))
	// Output:
	// not_found: no such account
	// not_found 1
}

func ExampleCodeOf() {
	wrapped := fmt.Errorf("loading profile: %w", tether.Errorf(tether.CodeUnavailable, "server restarting"))
	fmt.Println(tether.CodeOf(wrapped))
	fmt.Println(errors.Is(wrapped, tether.NewError(tether.CodeUnavailable, nil)))
	fmt.Println(tether.CodeOf(nil))
	// Output:
	// unavailable
	// true
	// ok
}

func ExampleMetadata() {
	md := tether.NewMetadata("Tenant", "acme")
	md.Add("tag", "a")
	md.Add("tag", "b")
	fmt.Println(md.Get("tenant"), md.Values("TAG"))
	// Output: acme [a b]
}
