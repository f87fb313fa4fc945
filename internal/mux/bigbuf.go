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
// A pool holds buffers of one size class: up to fineMax one class per 8 KiB
// page (the runtime rounds large allocations up to pages, so a class holds
// buffers of one capacity, and any of them fits every request that looks
// there first), above it one per power of two. (With a class per power of
// two below fineMax too, a 64 KiB buffer at the head of the class that a
// 72 KiB request looks in first was taken, refused and put back where the
// next request found it: on a server that collects rarely, most of an
// upload's requests allocated.)
var bigPools [fineClasses + maxBigShift - fineMaxShift + 1]sync.Pool

const (
	minBigShift = 15 // 32 KiB: smaller buffers are cheap to allocate
	maxBigShift = 24 // 16 MiB: larger ones are rare and not kept
	// minBig is the smallest buffer getBig pools.
	minBig = 1 << minBigShift
	// bigPage is what the runtime rounds a large allocation up to.
	bigPage = 8 << 10
	// fineMax is the largest capacity of the classes of one page each.
	fineMaxShift = 20
	fineMax      = 1 << fineMaxShift
	fineClasses  = (fineMax-minBig)/bigPage + 1
)

// bigClass is the index in bigPools of a buffer of capacity c, or -1 if
// such buffers are not pooled. Every buffer of class k < fineClasses holds
// at least minBig + k*bigPage bytes; of class fineClasses+j, at least
// 2^(fineMaxShift+j) (more than fineMax for j = 0).
func bigClass(c int) int {
	switch {
	case c < minBig:
		return -1
	case c <= fineMax:
		return (c - minBig) / bigPage
	}
	k := bits.Len(uint(c)) - 1 // 2^k <= c < 2^(k+1)
	if k > maxBigShift {
		return -1
	}
	return fineClasses + k - fineMaxShift
}

// getBig returns a slab with no reference whose empty buffer has room for
// n bytes, n >= minBig, and at most twice that, or nil when n is too large
// to pool. (Within twice: a queued frame's buffer then holds at most
// twice its payload, the bound docs/DESIGN.md gives for a stream's queue.)
func getBig(n int) *slab { return getBigWithin(n, 2*n) }

// getBigWithin is getBig with capacity at most limit, which is at least n
// rounded up to a page. It looks in the class of n rounded up to a page,
// whose buffers up to fineMax all hold n and above it may not, and in the
// next, whose buffers all hold n, unless all of those are over limit. A
// buffer that does not fit is dropped rather than put back where the next
// request of its size would find it again, so a class fills with buffers
// its requests can use. A new buffer is n rounded up to a page.
func getBigWithin(n, limit int) *slab {
	if n > 1<<maxBigShift {
		return nil
	}
	size := pageUp(n)
	k := bigClass(max(size, minBig))
	for i := k; i < k+2 && i < len(bigPools) && classMin(i) <= limit; i++ {
		if v := bigPools[i].Get(); v != nil {
			sl := v.(*slab)
			if c := cap(sl.buf); c >= n && c <= limit {
				sl.buf = sl.buf[:0]
				return sl
			}
		}
	}
	return &slab{buf: make([]byte, 0, size)}
}

// pageUp is n rounded up to a whole page, as the runtime allocates a large
// buffer.
func pageUp(n int) int { return (n + bigPage - 1) &^ (bigPage - 1) }

// classMin is the least capacity of a buffer of class k (bigClass).
func classMin(k int) int {
	if k < fineClasses {
		return minBig + k*bigPage
	}
	if k == fineClasses {
		return fineMax + 1
	}
	return 1 << (k - fineClasses + fineMaxShift)
}

// putBig returns sl, which no one uses any longer, to its pool.
func putBig(sl *slab) {
	k := bigClass(cap(sl.buf))
	if k < 0 {
		return
	}
	sl.refs = 0
	bigPools[k].Put(sl)
}
