package tether

import (
	"sort"
	"strings"
)

// Metadata is a set of call headers or trailers. Keys are case-insensitive and
// stored in lower case; a key may have several values. Keys that start with
// "tether-" are reserved for the protocol.
//
// Values are UTF-8 text, except the values of keys that end in "-bin"
// (IsBinaryKey), which hold raw bytes, as in gRPC: store them as they are
// (string(b)) and they reach the peer unchanged. A value of any other key
// that is not valid UTF-8 cannot be sent (docs/PROTOCOL.md section 9).
type Metadata map[string][]string

// BinarySuffix ends the keys whose values are raw bytes.
const BinarySuffix = "-bin"

// IsBinaryKey reports whether key's values are raw bytes: whether it ends in
// BinarySuffix, in any case.
func IsBinaryKey(key string) bool {
	return len(key) >= len(BinarySuffix) && strings.EqualFold(key[len(key)-len(BinarySuffix):], BinarySuffix)
}

// NewMetadata returns metadata built from alternating keys and values. It
// panics if given an odd number of strings.
func NewMetadata(kv ...string) Metadata {
	if len(kv)%2 == 1 {
		panic("tether: NewMetadata needs an even number of strings")
	}
	md := make(Metadata, len(kv)/2)
	for i := 0; i < len(kv); i += 2 {
		md.Add(kv[i], kv[i+1])
	}
	return md
}

// Get returns the first value of key, or "".
func (md Metadata) Get(key string) string {
	if v := md[strings.ToLower(key)]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// Values returns all values of key.
func (md Metadata) Values(key string) []string { return md[strings.ToLower(key)] }

// Set replaces the values of key with value.
func (md Metadata) Set(key, value string) { md[strings.ToLower(key)] = []string{value} }

// Add appends value to the values of key.
func (md Metadata) Add(key, value string) {
	k := strings.ToLower(key)
	md[k] = append(md[k], value)
}

// Del removes key.
func (md Metadata) Del(key string) { delete(md, strings.ToLower(key)) }

// Clone returns a deep copy of md.
func (md Metadata) Clone() Metadata {
	if md == nil {
		return nil
	}
	out := make(Metadata, len(md))
	for k, v := range md {
		out[k] = append([]string(nil), v...)
	}
	return out
}

// Keys returns the keys in sorted order.
func (md Metadata) Keys() []string {
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Merge adds every value of other to md.
func (md Metadata) Merge(other Metadata) {
	for k, vs := range other {
		for _, v := range vs {
			md.Add(k, v)
		}
	}
}
