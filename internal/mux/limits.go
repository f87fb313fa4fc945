package mux

// Limits on what a peer can make this side do or allocate: the rate of
// PINGs and of frames without application data (pingLimit, idleFrame: token
// buckets owned by the reader goroutine, or its waiter when it parks) and
// the cost of metadata against
// MaxHeaderBytes, counted on received payloads before they are decoded
// (headerCost, on the reader goroutine) and on what this side sends
// (metadataCost, sendHeaderLimit, on the sending goroutine). No state of
// their own beyond the limiters, no lock.

import (
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/frame"
)

// idleFrame counts a frame that carries no application data against
// MaxIdleFrameRate.
func (c *Conn) idleFrame(what string) error {
	if !c.idleLimit.allow(time.Now(), c.cfg.MaxIdleFrameRate, int(2*c.cfg.MaxIdleFrameRate)+1) {
		return &floodError{what}
	}
	return nil
}

// tokenBucket admits events at rate a second with bursts of burst: what
// golang.org/x/time/rate's Limiter.Allow does, without its lock and its
// 80-byte allocation, for the one goroutine that owns it (two per
// connection, part of an idle connection's memory). It starts full.
type tokenBucket struct {
	tokens float64 // tokens available at last
	last   int64   // Unix ns of the last refill; 0: never used (full)
}

// allow takes a token if one is available at now.
func (b *tokenBucket) allow(now time.Time, rate float64, burst int) bool {
	t := now.UnixNano()
	if b.last == 0 {
		b.tokens, b.last = float64(burst), t
	}
	if t > b.last {
		b.tokens = min(float64(burst), b.tokens+float64(t-b.last)*rate/1e9)
		b.last = t
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// pingAllowed counts a PING (tether's or a WebSocket ping) against
// MaxPingRate, bursts of twice that plus one.
func (c *Conn) pingAllowed() bool {
	return c.pingLimit.allow(time.Now(), c.cfg.MaxPingRate, int(2*c.cfg.MaxPingRate)+1)
}

// sendHeaderLimit is the largest cost (headerCost) of an OPEN, HEADERS or
// END payload this side sends: what the peer announced it accepts, or else
// this side's own limit, and never more than a frame.
func (c *Conn) sendHeaderLimit() int {
	limit := min(c.cfg.MaxHeaderBytes, frame.MaxPayload)
	if p := c.cfg.PeerMaxHeaderBytes; p > 0 {
		limit = min(p, frame.MaxPayload)
	}
	return limit
}

// metadataItemCost is what each metadata entry and each value costs against
// MaxHeaderBytes on top of its encoded bytes. An empty value takes 2 bytes
// on the wire but a 16-byte string header both in the decoded message and
// in tether.Metadata, plus slice growth; counting 32 bytes per item (as
// HTTP/2 counts 32 bytes per header field, RFC 9113 section 6.5.2) bounds
// what a payload within the limit costs in memory once decoded, to a few
// times the limit (TestMetadataMemoryBounded).
const metadataItemCost = 32

// The field numbers of the repeated MetadataEntry in tether.v1.Open,
// tether.v1.Headers and tether.v1.End, and of the values in MetadataEntry.
const (
	openMetadataField    = 2
	headersMetadataField = 1
	endTrailersField     = 2
	entryValuesField     = 2
	entryBinaryField     = 3
)

// headerCost is what an encoded OPEN, HEADERS or END payload costs against
// MaxHeaderBytes: its length plus metadataItemCost per metadata entry
// (field number field) and per value, counted on the encoded bytes without
// decoding them; entries is the number of entries. Malformed input is
// counted as far as it parses: the decoder rejects it afterwards.
func headerCost(b []byte, field protowire.Number) (cost, entries int) {
	size, items := len(b), 0
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			break
		}
		b = b[l:]
		l = protowire.ConsumeFieldValue(num, typ, b)
		if l < 0 {
			break
		}
		if num == field && typ == protowire.BytesType {
			entries++
			items++
			entry, _ := protowire.ConsumeBytes(b[:l])
			items += countField(entry, entryValuesField) + countField(entry, entryBinaryField)
		}
		b = b[l:]
	}
	return size + items*metadataItemCost, entries
}

// countField counts the occurrences of field number field in an encoded
// message, as far as it parses.
func countField(b []byte, field protowire.Number) int {
	n := 0
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return n
		}
		b = b[l:]
		if l = protowire.ConsumeFieldValue(num, typ, b); l < 0 {
			return n
		}
		if num == field {
			n++
		}
		b = b[l:]
	}
	return n
}

// metadataCost is what md costs against MaxHeaderBytes beyond its encoded
// size (headerCost), for a sender.
func metadataCost(md []*tetherv1.MetadataEntry) int {
	items := len(md)
	for _, e := range md {
		items += len(e.GetValues()) + len(e.GetBinaryValues())
	}
	return items * metadataItemCost
}
