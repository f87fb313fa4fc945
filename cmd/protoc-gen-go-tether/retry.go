package main

import (
	"fmt"
	"math"
	"strconv"
	"time"

	"google.golang.org/protobuf/compiler/protogen"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// The (tether.v1.retry) method option is read through the descriptors that
// protoc sends, not through the Go package generated from tether.proto
// (gen/tether/v1). The plugin then builds even when gen/ is missing or stale,
// although the same buf run generates it, and it reads the option as the
// tether.proto being compiled declares it.

const (
	retryExtension   protoreflect.FullName = "tether.v1.retry"
	resumableExt     protoreflect.FullName = "tether.v1.resumable"
	fromCursorExt    protoreflect.FullName = "tether.v1.resume_from_cursor"
	retryPolicyName  protoreflect.FullName = "tether.v1.RetryPolicy"
	codeEnumName     protoreflect.FullName = "tether.v1.Code"
	durationName     protoreflect.FullName = "google.protobuf.Duration"
	methodOptionName protoreflect.FullName = "google.protobuf.MethodOptions"
)

// retryPolicy is a method's (tether.v1.retry) option. Zero fields were not
// set in the option.
type retryPolicy struct {
	maxAttempts       uint32
	initialBackoff    duration
	maxBackoff        duration
	backoffMultiplier float64
	retryableCodes    []string // names of tether.Code constants
	deadLetter        bool
}

// retryReader reads (tether.v1.retry), (tether.v1.resumable) and
// (tether.v1.resume_from_cursor) options.
type retryReader struct {
	ext        protoreflect.ExtensionType // nil when no file declares the option
	resumable  protoreflect.ExtensionType // nil when no file declares (tether.v1.resumable)
	fromCursor protoreflect.ExtensionType // nil when no file declares (tether.v1.resume_from_cursor)
	types      *protoregistry.Types       // resolves ext, resumable and fromCursor
}

// retryPolicyFields are the fields of tether.v1.RetryPolicy the generator
// knows, with their kinds.
var retryPolicyFields = map[protoreflect.Name]struct {
	kind protoreflect.Kind
	list bool
	elem protoreflect.FullName // the message or enum, for those kinds
}{
	"max_attempts":       {kind: protoreflect.Uint32Kind},
	"initial_backoff":    {kind: protoreflect.MessageKind, elem: durationName},
	"max_backoff":        {kind: protoreflect.MessageKind, elem: durationName},
	"backoff_multiplier": {kind: protoreflect.DoubleKind},
	"retryable_codes":    {kind: protoreflect.EnumKind, list: true, elem: codeEnumName},
	"dead_letter":        {kind: protoreflect.BoolKind},
}

// newRetryReader finds the declaration of (tether.v1.retry) among the files
// of the request. Files that use the option import tether/v1/tether.proto,
// so it is there whenever it is needed.
func newRetryReader(gen *protogen.Plugin) (*retryReader, error) {
	for _, f := range gen.Files {
		if f.Desc.Package() != retryExtension.Parent() {
			continue
		}
		xd := f.Desc.Extensions().ByName(retryExtension.Name())
		if xd == nil {
			continue
		}
		if err := checkRetryExtension(xd); err != nil {
			return nil, fmt.Errorf("%s: %v", f.Desc.Path(), err)
		}
		ext := dynamicpb.NewExtensionType(xd)
		types := new(protoregistry.Types)
		if err := types.RegisterExtension(ext); err != nil {
			return nil, err
		}
		r := &retryReader{ext: ext, types: types}
		for _, b := range []struct {
			name protoreflect.FullName
			ext  *protoreflect.ExtensionType
		}{{resumableExt, &r.resumable}, {fromCursorExt, &r.fromCursor}} {
			rd := f.Desc.Extensions().ByName(b.name.Name())
			if rd == nil {
				continue
			}
			if rd.ContainingMessage().FullName() != methodOptionName || rd.Kind() != protoreflect.BoolKind || rd.IsList() {
				return nil, fmt.Errorf("%s: %s is not a bool option on %s", f.Desc.Path(), b.name, methodOptionName)
			}
			*b.ext = dynamicpb.NewExtensionType(rd)
			if err := types.RegisterExtension(*b.ext); err != nil {
				return nil, err
			}
		}
		return r, nil
	}
	return &retryReader{}, nil
}

// checkRetryExtension checks that xd is the option this generator knows.
func checkRetryExtension(xd protoreflect.ExtensionDescriptor) error {
	if xd.ContainingMessage().FullName() != methodOptionName ||
		xd.Kind() != protoreflect.MessageKind || xd.IsList() ||
		xd.Message().FullName() != retryPolicyName {
		return fmt.Errorf("%s is not an option of type %s on %s", retryExtension, retryPolicyName, methodOptionName)
	}
	fields := xd.Message().Fields()
	for name, want := range retryPolicyFields {
		fd := fields.ByName(name)
		ok := fd != nil && fd.Kind() == want.kind && fd.IsList() == want.list
		if ok && fd.Message() != nil {
			ok = fd.Message().FullName() == want.elem
		}
		if ok && fd.Enum() != nil {
			ok = fd.Enum().FullName() == want.elem
		}
		if !ok {
			return fmt.Errorf("%s.%s is missing or has an unexpected type; protoc-gen-go-tether %s does not match this tether.proto", retryPolicyName, name, version)
		}
	}
	return nil
}

// streamDeadLetterReason says why client-streaming and bidi methods cannot
// be dead-lettered.
const streamDeadLetterReason = "a live stream of requests, sent as the application makes them, cannot be parked in the dead-letter queue and replayed later (tether retries such a call before its first response, within the client's retry buffer; remove dead_letter)"

// policy returns m's retry policy, or nil if it declares none.
func (r *retryReader) policy(m *protogen.Method) (*retryPolicy, error) {
	if r.ext == nil {
		return nil, nil
	}
	opts, err := r.options(m)
	if err != nil {
		return nil, err
	}
	xd := r.ext.TypeDescriptor()
	if !opts.ProtoReflect().Has(xd) {
		return nil, nil
	}
	p := new(retryPolicy)
	msg := opts.ProtoReflect().Get(xd).Message()
	fields := msg.Descriptor().Fields()
	for i := range fields.Len() { // in declaration order, so errors are deterministic
		if fd := fields.Get(i); msg.Has(fd) {
			if err := p.set(fd, msg.Get(fd)); err != nil {
				return nil, fmt.Errorf("%s: option (%s): %v", m.Desc.FullName(), retryExtension, err)
			}
		}
	}
	if p.deadLetter && m.Desc.IsStreamingClient() {
		kind := "client-streaming"
		if m.Desc.IsStreamingServer() {
			kind = "bidi-streaming"
		}
		return nil, fmt.Errorf("%s: option (%s): dead_letter is not supported on %s method %s: %s",
			m.Desc.FullName(), retryExtension, kind, m.Desc.Name(), streamDeadLetterReason)
	}
	if p.initialBackoff != 0 && p.maxBackoff != 0 && p.maxBackoff < p.initialBackoff {
		return nil, fmt.Errorf("%s: option (%s): max_backoff %v is less than initial_backoff %v",
			m.Desc.FullName(), retryExtension, p.maxBackoff, p.initialBackoff)
	}
	return p, nil
}

// options parses m's options again, resolving tether's extensions: the
// plugin's unmarshaling left them among the unknown fields.
func (r *retryReader) options(m *protogen.Method) (*descriptorpb.MethodOptions, error) {
	b, err := proto.Marshal(m.Desc.Options())
	if err != nil {
		return nil, err
	}
	opts := new(descriptorpb.MethodOptions)
	if err := (proto.UnmarshalOptions{Resolver: r.types}).Unmarshal(b, opts); err != nil {
		return nil, fmt.Errorf("%s: parse options: %v", m.Desc.FullName(), err)
	}
	return opts, nil
}

// isResumable reports m's (tether.v1.resumable) and
// (tether.v1.resume_from_cursor) options; the second implies the first.
// Either is an error on a unary method: only streams can be resumed.
func (r *retryReader) isResumable(m *protogen.Method) (resumable, fromCursor bool, err error) {
	if r.resumable == nil && r.fromCursor == nil {
		return false, false, nil
	}
	opts, err := r.options(m)
	if err != nil {
		return false, false, err
	}
	set := func(x protoreflect.ExtensionType) bool {
		if x == nil {
			return false
		}
		xd := x.TypeDescriptor()
		return opts.ProtoReflect().Has(xd) && opts.ProtoReflect().Get(xd).Bool()
	}
	resumable, fromCursor = set(r.resumable), set(r.fromCursor)
	if !m.Desc.IsStreamingClient() && !m.Desc.IsStreamingServer() {
		switch {
		case fromCursor:
			return false, false, fmt.Errorf("%s: option (%s) is for streaming methods; unary method %s cannot be resumed (retry it instead)", m.Desc.FullName(), fromCursorExt, m.Desc.Name())
		case resumable:
			return false, false, fmt.Errorf("%s: option (%s) is for streaming methods; unary method %s cannot be resumed (retry it instead)", m.Desc.FullName(), resumableExt, m.Desc.Name())
		}
	}
	return resumable || fromCursor, fromCursor, nil
}

// set stores one field of the option.
func (p *retryPolicy) set(fd protoreflect.FieldDescriptor, v protoreflect.Value) error {
	switch fd.Name() {
	case "max_attempts":
		n := v.Uint()
		if n > math.MaxInt32 {
			return fmt.Errorf("max_attempts %d is too large", n)
		}
		p.maxAttempts = uint32(n)
	case "initial_backoff":
		d, err := backoff(fd.Name(), v.Message())
		if err != nil {
			return err
		}
		p.initialBackoff = d
	case "max_backoff":
		d, err := backoff(fd.Name(), v.Message())
		if err != nil {
			return err
		}
		p.maxBackoff = d
	case "backoff_multiplier":
		f := v.Float()
		if math.IsNaN(f) || math.IsInf(f, 0) || f <= 0 {
			return fmt.Errorf("backoff_multiplier must be a positive number, not %v", f)
		}
		p.backoffMultiplier = f
	case "retryable_codes":
		list := v.List()
		seen := make(map[protoreflect.EnumNumber]bool)
		for i := range list.Len() {
			n := list.Get(i).Enum()
			name := strconv.Itoa(int(n))
			if ev := fd.Enum().Values().ByNumber(n); ev != nil {
				name = string(ev.Name())
			}
			switch {
			case n == 0:
				return fmt.Errorf("retryable_codes: %s is not an error code", name)
			case int(n) < 0 || int(n) >= len(codeIdents):
				return fmt.Errorf("retryable_codes: %s is not a code tether defines", name)
			case seen[n]:
				return fmt.Errorf("retryable_codes: %s is listed twice", name)
			}
			seen[n] = true
			p.retryableCodes = append(p.retryableCodes, codeIdents[n])
		}
	case "dead_letter":
		p.deadLetter = v.Bool()
	default:
		return fmt.Errorf("field %s is not supported by protoc-gen-go-tether %s", fd.Name(), version)
	}
	return nil
}

// codeIdents maps tether.v1.Code numbers to the names of the tether.Code
// constants; the numbers are the same. CODE_OK is never retryable.
var codeIdents = [...]string{
	1:  "CodeCanceled",
	2:  "CodeUnknown",
	3:  "CodeInvalidArgument",
	4:  "CodeDeadlineExceeded",
	5:  "CodeNotFound",
	6:  "CodeAlreadyExists",
	7:  "CodePermissionDenied",
	8:  "CodeResourceExhausted",
	9:  "CodeFailedPrecondition",
	10: "CodeAborted",
	11: "CodeOutOfRange",
	12: "CodeUnimplemented",
	13: "CodeInternal",
	14: "CodeUnavailable",
	15: "CodeDataLoss",
	16: "CodeUnauthenticated",
}

// duration is a positive time.Duration.
type duration time.Duration

// String formats d as time.Duration does.
func (d duration) String() string { return time.Duration(d).String() }

// durationUnits are the time package's units, largest first.
var durationUnits = []struct {
	name string
	size time.Duration
}{
	{"Hour", time.Hour},
	{"Minute", time.Minute},
	{"Second", time.Second},
	{"Millisecond", time.Millisecond},
	{"Microsecond", time.Microsecond},
	{"Nanosecond", time.Nanosecond},
}

// split returns d as n times the largest unit that divides it: 90s is 90
// Second, 1.5ms is 1500 Microsecond.
func (d duration) split() (n int64, unit string) {
	for _, u := range durationUnits {
		if time.Duration(d)%u.size == 0 {
			return int64(time.Duration(d) / u.size), u.name
		}
	}
	panic("unreachable")
}

// backoff converts a google.protobuf.Duration to a positive duration.
func backoff(field protoreflect.Name, m protoreflect.Message) (duration, error) {
	fields := m.Descriptor().Fields()
	seconds := m.Get(fields.ByName("seconds")).Int()
	nanos := m.Get(fields.ByName("nanos")).Int()
	const maxSeconds = 315576000000 // google.protobuf.Duration's range: 10,000 years
	if seconds < -maxSeconds || seconds > maxSeconds || nanos <= -1e9 || nanos >= 1e9 ||
		(seconds > 0 && nanos < 0) || (seconds < 0 && nanos > 0) {
		return 0, fmt.Errorf("%s {seconds: %d, nanos: %d} is not a valid google.protobuf.Duration", field, seconds, nanos)
	}
	if seconds < 0 || (seconds == 0 && nanos <= 0) {
		return 0, fmt.Errorf("%s {seconds: %d, nanos: %d} is not positive", field, seconds, nanos)
	}
	if seconds > (math.MaxInt64-nanos)/int64(time.Second) {
		return 0, fmt.Errorf("%s {seconds: %d} is longer than a time.Duration holds", field, seconds)
	}
	return duration(time.Duration(seconds)*time.Second + time.Duration(nanos)), nil
}

// formatFloat formats f as a Go constant that converts back to f.
func formatFloat(f float64) string {
	return strconv.FormatFloat(f, 'g', -1, 64)
}
