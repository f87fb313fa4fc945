package idempotency

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/tetherrpc/tether"
	tetherv1 "github.com/tetherrpc/tether/gen/tether/v1"
	"github.com/tetherrpc/tether/internal/wire"
	"github.com/tetherrpc/tether/server"
)

// Defaults of a Store-backed interceptor.
const (
	DefaultLease        = 30 * time.Second
	DefaultPollInterval = 25 * time.Millisecond
)

// storeConfig is the state of an interceptor that keeps its keys in a
// Store (WithStore) instead of its built-in cache.
type storeConfig struct {
	store      Store
	lease      time.Duration
	poll       time.Duration
	failClosed bool
	logger     *slog.Logger
	instance   string        // random prefix of this interceptor's owners
	seq        atomic.Uint64 // owner counter
	degraded   atomic.Uint64 // calls run without deduplication
}

func (i *Interceptor) storeCfg() *storeConfig {
	if i.sc == nil {
		var b [8]byte
		_, _ = rand.Read(b[:])
		i.sc = &storeConfig{lease: DefaultLease, poll: DefaultPollInterval, logger: slog.Default(), instance: hex.EncodeToString(b[:])}
	}
	return i.sc
}

// WithStore keeps keys, claims and results in s instead of the built-in
// in-memory cache: a store shared by several servers (contrib/nats) makes a
// repeat that lands on another server, or on this one after a restart, get
// the first call's result. WithMaxEntries and WithMaxBytes then do not
// apply (the store has its own bounds); WithTTL does.
//
// Each call that runs its handler claims its key with a unique owner and a
// lease (WithLease), renewed while the handler runs; a repeat that finds a
// live claim polls the store (WithPollInterval) until the claim completes,
// is released or expires, or the repeat's context ends. A claim whose
// server died expires with its lease, and then exactly one repeat runs.
//
// When the store fails (unreachable, timing out), the call runs its handler
// without deduplication, and the interceptor logs a warning for it (see
// WithLogger) and counts it (StoreErrors): calls keep working, and dedup
// degrades visibly. WithFailClosed refuses such calls instead.
func WithStore(s Store) Option { return func(i *Interceptor) { i.storeCfg().store = s } }

// WithLease sets how long a claim in a Store lives without renewal
// (default 30 s): after a server dies mid-call, its repeats wait up to this
// long before one of them runs. The interceptor renews the lease every
// third of it while the handler runs. d <= 0 keeps the default.
func WithLease(d time.Duration) Option {
	return func(i *Interceptor) {
		if d > 0 {
			i.storeCfg().lease = d
		}
	}
}

// WithPollInterval sets how often a repeat that found a running claim in
// a Store asks again (default 25 ms). d <= 0 keeps the default.
func WithPollInterval(d time.Duration) Option {
	return func(i *Interceptor) {
		if d > 0 {
			i.storeCfg().poll = d
		}
	}
}

// WithFailClosed makes a call whose Store fails answer unavailable without
// running its handler, as unprocessed (server.RefuseUnprocessed: the client
// retries it transparently, within its bounded transparent retries, and a
// dead-letter policy parks it if those run out), instead of running it
// without deduplication.
func WithFailClosed() Option { return func(i *Interceptor) { i.storeCfg().failClosed = true } }

// WithLogger sets the logger for Store failures (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(i *Interceptor) {
		if l != nil {
			i.storeCfg().logger = l
		}
	}
}

// StoreErrors returns how many calls ran without deduplication, or were
// refused (WithFailClosed), because the Store failed.
func (i *Interceptor) StoreErrors() uint64 {
	if i.sc == nil {
		return 0
	}
	return i.sc.degraded.Load()
}

// doStore runs the call identified by k against the Store.
// md (its CallInfo) gets the stored response headers and trailers of a
// repeat.
func (i *Interceptor) doStore(ctx context.Context, k Key, md callMeta, run func() (proto.Message, error)) (proto.Message, error) {
	sc := i.sc
	owner := fmt.Sprintf("%s-%d", sc.instance, sc.seq.Add(1))
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		r, err := sc.store.Claim(ctx, k, owner, sc.lease)
		switch {
		case err != nil && errors.Is(err, ErrFull):
			return nil, server.RefuseUnprocessed(ctx, tether.Errorf(tether.CodeUnavailable, "idempotency: store full of running calls; try again later"))
		case err != nil && ctx.Err() != nil:
			return nil, tether.AsError(ctx.Err())
		case err != nil:
			return i.degrade(ctx, k, err, run)
		case r.State == StateClaimed:
			i.count(false)
			return i.runClaimed(ctx, k, owner, md, run)
		case r.State == StateDone:
			i.count(true)
			res, hdr, trl, err := decodeResult(r.Result)
			replayMeta(md, hdr, trl)
			return res, err
		}
		// Running elsewhere: ask again after a while.
		if timer == nil {
			timer = time.NewTimer(sc.poll)
		} else {
			timer.Reset(sc.poll)
		}
		select {
		case <-ctx.Done():
			return nil, tether.AsError(ctx.Err())
		case <-timer.C:
		}
	}
}

func (i *Interceptor) count(hit bool) {
	i.mu.Lock()
	if hit {
		i.hits++
	} else {
		i.misses++
	}
	i.mu.Unlock()
}

// degrade runs the call without deduplication (or refuses it, fail-closed)
// because the store failed, and says so in the log.
func (i *Interceptor) degrade(ctx context.Context, k Key, serr error, run func() (proto.Message, error)) (proto.Message, error) {
	sc := i.sc
	sc.degraded.Add(1)
	if sc.failClosed {
		sc.logger.Warn("idempotency: store failed; call refused (fail-closed)", "procedure", k.Procedure, "err", serr)
		return nil, server.RefuseUnprocessed(ctx, tether.Errorf(tether.CodeUnavailable, "idempotency: store unavailable; try again later"))
	}
	sc.logger.Warn("idempotency: store failed; call runs WITHOUT deduplication", "procedure", k.Procedure, "err", serr)
	return run()
}

// runClaimed runs the handler of the call whose owner claimed k, renewing
// the lease meanwhile, and completes or releases the claim however the
// handler ends (a panic releases it and goes on to the server's recovery).
func (i *Interceptor) runClaimed(ctx context.Context, k Key, owner string, md callMeta, run func() (proto.Message, error)) (res proto.Message, err error) {
	sc := i.sc
	// Store writes after the handler must happen even if the caller went
	// away; they are bounded by the lease.
	bg := context.WithoutCancel(ctx)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(sc.lease / 3)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			rctx, cancel := context.WithTimeout(bg, sc.lease/3)
			err := sc.store.Renew(rctx, k, owner, sc.lease)
			cancel()
			if errors.Is(err, ErrNotOwner) {
				sc.logger.Warn("idempotency: lease lost while the handler runs; a repeat may run it again", "procedure", k.Procedure)
				return
			} else if err != nil {
				sc.logger.Warn("idempotency: lease renewal failed", "procedure", k.Procedure, "err", err)
			}
		}
	}()
	settle := func(result []byte, release bool) {
		close(stop)
		wg.Wait()
		wctx, cancel := context.WithTimeout(bg, sc.lease)
		defer cancel()
		if release {
			if err := sc.store.Release(wctx, k, owner); err != nil {
				sc.logger.Warn("idempotency: release failed; repeats wait for the lease to expire", "procedure", k.Procedure, "err", err)
			}
			return
		}
		if err := sc.store.Complete(wctx, k, owner, result, i.ttl); err != nil {
			sc.degraded.Add(1)
			sc.logger.Warn("idempotency: result not stored; a repeat may run the handler again", "procedure", k.Procedure, "err", err)
		}
	}
	returned := false
	defer func() {
		if !returned {
			settle(nil, true)
		}
	}()
	res, err = run()
	returned = true
	if transient(err) {
		settle(nil, true)
		return res, err
	}
	hdr, trl := responseMeta(md)
	b, eerr := encodeResult(res, err, hdr, trl)
	settle(b, eerr != nil)
	return res, err
}

// Encoded results (Record.Result), protobuf wire format:
//
//	1: version (varint, 1)
//	2: an error: tether.v1.End (status with details, trailers)
//	3: the response's message type, full name
//	4: the response, encoded
//	5: repeated tether.v1.MetadataEntry: the response headers the handler set
//	6: repeated tether.v1.MetadataEntry: the response trailers the handler
//	   set (an error's own trailers are in 2)
//
// A result with neither 2 nor 3 is a handler that returned neither
// response nor error. Fields 5 and 6 were added without a new version:
// results written before them decode with no headers or trailers, and
// servers of the earlier version skip them (their repeats get no headers
// or trailers, as before).
const resultVersion = 1

func encodeResult(res proto.Message, err error, hdr, trl tether.Metadata) ([]byte, error) {
	b := protowire.AppendTag(nil, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, resultVersion)
	for _, f := range []struct {
		num protowire.Number
		md  tether.Metadata
	}{{5, hdr}, {6, trl}} {
		for _, e := range wire.MetadataToProto(f.md) {
			eb, merr := proto.Marshal(e)
			if merr != nil {
				return nil, merr
			}
			b = protowire.AppendTag(b, f.num, protowire.BytesType)
			b = protowire.AppendBytes(b, eb)
		}
	}
	switch {
	case err != nil:
		e := tether.AsError(err)
		end, merr := proto.Marshal(&tetherv1.End{Status: wire.StatusFromError(e), Trailers: wire.MetadataToProto(e.Meta())})
		if merr != nil {
			return nil, merr
		}
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendBytes(b, end)
	case res != nil:
		body, merr := proto.Marshal(res)
		if merr != nil {
			return nil, merr
		}
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendString(b, string(res.ProtoReflect().Descriptor().FullName()))
		b = protowire.AppendTag(b, 4, protowire.BytesType)
		b = protowire.AppendBytes(b, body)
	}
	return b, nil
}

// decodeResult decodes what encodeResult encoded: the response or the
// error, and the response headers and trailers.
func decodeResult(b []byte) (res proto.Message, hdr, trl tether.Metadata, err error) {
	res, hdrE, trlE, err := decodeFields(b)
	if len(hdrE) > 0 {
		hdr = wire.MetadataFromProto(hdrE)
	}
	if len(trlE) > 0 {
		trl = wire.MetadataFromProto(trlE)
	}
	return res, hdr, trl, err
}

func decodeFields(b []byte) (res proto.Message, hdr, trl []*tetherv1.MetadataEntry, err error) {
	bad := func(what string) error {
		return tether.Errorf(tether.CodeInternal, "idempotency: stored result: %s", what)
	}
	var version uint64
	var end, body []byte
	var typeName string
	entry := func(b []byte, into *[]*tetherv1.MetadataEntry) int {
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return n
		}
		e := &tetherv1.MetadataEntry{}
		if proto.Unmarshal(v, e) != nil {
			return -1
		}
		*into = append(*into, e)
		return n
	}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, nil, nil, bad("bad tag")
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.VarintType:
			version, n = protowire.ConsumeVarint(b)
		case num == 2 && typ == protowire.BytesType:
			end, n = protowire.ConsumeBytes(b)
		case num == 3 && typ == protowire.BytesType:
			var s []byte
			s, n = protowire.ConsumeBytes(b)
			typeName = string(s)
		case num == 4 && typ == protowire.BytesType:
			body, n = protowire.ConsumeBytes(b)
		case num == 5 && typ == protowire.BytesType:
			n = entry(b, &hdr)
		case num == 6 && typ == protowire.BytesType:
			n = entry(b, &trl)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return nil, nil, nil, bad("bad field")
		}
		b = b[n:]
	}
	if version != resultVersion {
		return nil, nil, nil, bad(fmt.Sprintf("version %d", version))
	}
	if end != nil {
		var e tetherv1.End
		if err := proto.Unmarshal(end, &e); err != nil {
			return nil, nil, nil, bad(err.Error())
		}
		err := wire.ErrorFromStatus(e.GetStatus(), wire.MetadataFromProto(e.GetTrailers()))
		if err == nil {
			return nil, nil, nil, bad("error with code ok")
		}
		return nil, hdr, trl, err
	}
	if typeName == "" {
		return nil, hdr, trl, nil
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName(typeName))
	if err != nil {
		return nil, nil, nil, bad(err.Error())
	}
	m := mt.New().Interface()
	if err := proto.Unmarshal(body, m); err != nil {
		return nil, nil, nil, bad(err.Error())
	}
	return m, hdr, trl, nil
}
