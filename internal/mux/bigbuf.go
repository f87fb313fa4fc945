package mux

import (
	"math/bits"
	"sync"
)

// Large buffers (large frames copied out of the reader's buffer, messages
// being assembled from fragments, large messages being marshalled) are
// pooled: the Go runtime allocates anything over 32 KiB straight from the
// heap, zeroed, and a stream of 64 KiB messages otherwise spent more time
// allocating and collecting such buffers than copying into them. A pooled
// buffer travels as a slab (slab.go) with one reference; releaseLocked
// returns it here once its reference is dropped, which is where a small
// slab goes back to slabPool. Like every sync.Pool, the pools are emptied
// by the garbage collector, so an idle process holds none of it.
//
// bigPools[k] holds buffers whose capacity is in [2^(k+minBigShift),
// 2^(k+minBigShift+1)).
var bigPools [maxBigShift - minBigShift + 1]sync.Pool

const (
	minBigShift = 15 // 32 KiB: smaller buffers are cheap to allocate
	maxBigShift = 24 // 16 MiB: larger ones are rare and not kept
	// minBig is the smallest buffer getBig pools.
	minBig = 1 << minBigShift
)

// getBig returns a slab with no reference whose empty buffer has room for
// n bytes, n >= minBig, and at most twice that, or nil when n is too large
// to pool. (Within twice: a queued frame's buffer then holds at most
// twice its payload, the bound docs/DESIGN.md gives for a stream's queue.)
func getBig(n int) *slab { return getBigWithin(n, 2*n) }

// getBigWithin is getBig with capacity at most limit, n+8 KiB <= limit.
func getBigWithin(n, limit int) *slab {
	hi := bits.Len(uint(n - 1)) // every buffer in class hi-minBigShift holds n
	if hi > maxBigShift {
		return nil
	}
	for _, k := range [2]int{hi - 1, hi} {
		if k < minBigShift {
			continue
		}
		if v := bigPools[k-minBigShift].Get(); v != nil {
			sl := v.(*slab)
			if c := cap(sl.buf); c >= n && c <= limit {
				sl.buf = sl.buf[:0]
				return sl
			}
			bigPools[k-minBigShift].Put(sl)
		}
	}
	const page = 8 << 10 // the runtime rounds large allocations up to pages
	return &slab{buf: make([]byte, 0, (n+page-1)&^(page-1))}
}

// putBig returns sl, which no one uses any longer, to its pool.
func putBig(sl *slab) {
	k := bits.Len(uint(cap(sl.buf))) - 1
	if k < minBigShift || k > maxBigShift {
		return
	}
	sl.refs = 0
	bigPools[k-minBigShift].Put(sl)
}
