package main

// tether call: call any method of a server with JSON requests, from the
// server's reflection service or local descriptors (dynamicpb + protojson).

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/clientconn"
)

// stdin is where call reads requests when -d is absent or "-"; tests
// replace it.
var stdin io.Reader = os.Stdin

func runCall(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("call", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf connFlags
	cf.register(fs)
	data := fs.String("d", "-", "request as JSON; several JSON objects (e.g. one per line) for client and bidi streaming; - reads stdin")
	emitDefaults := fs.Bool("emit-defaults", false, "print fields that have their default value")
	verbose := fs.Bool("v", false, "print request metadata (the idempotency key), response headers and trailers to stderr")
	key := fs.String("idempotency-key", "", "the call's idempotency key (default: a random one, except for methods without side effects)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, `Usage: tether call [flags] URL package.Service/Method

Calls a method of the server at URL with JSON requests and prints the
responses as JSON: one for unary and client-streaming calls (indented), one
object per line as they arrive for server and bidi streaming. Client- and
bidi-streaming calls send each JSON object of the input (e.g. one per line
of stdin) as it is read.

Exit status: 0 when the call succeeds, 64 + the status code when it fails
(invalid_argument 67, deadline_exceeded 68, not_found 69, permission_denied
71, unimplemented 76, internal 77, unavailable 78, unauthenticated 80, ...),
2 for a bad command line. The error's code, message and details go to stderr.

`)
		fs.PrintDefaults()
	}
	if err := parseInterspersed(fs, args); err != nil {
		return exitUsage
	}
	if fs.NArg() != 2 {
		fs.Usage()
		return exitUsage
	}
	md, err := cf.headers.metadata()
	if err != nil {
		fmt.Fprintln(stderr, "tether:", err)
		return exitUsage
	}
	input := stdin
	if *data != "-" {
		input = strings.NewReader(*data)
	}
	cl := &caller{out: stdout, errOut: stderr, emitDefaults: *emitDefaults, verbose: *verbose, key: *key, md: md, input: input}
	return withSchema(&cf, fs.Arg(0), stderr, func(c *client.Client, sc schema) error {
		ctx, cancel := cf.context()
		defer cancel()
		cl.conn, cl.sc = c, sc
		return cl.call(ctx, fs.Arg(1))
	})
}

// caller makes one call for tether call.
type caller struct {
	out, errOut  io.Writer
	emitDefaults bool
	verbose      bool
	key          string
	md           tether.Metadata
	input        io.Reader
	conn         *client.Client
	sc           schema
}

// resolveMethod finds the method target (package.Service/Method or
// package.Service.Method) in sc and returns its descriptor and spec.
func resolveMethod(ctx context.Context, sc schema, target string) (protoreflect.MethodDescriptor, tether.Spec, error) {
	svc, meth, ok := strings.Cut(strings.TrimPrefix(target, "/"), "/")
	if !ok {
		i := strings.LastIndex(target, ".")
		if i < 0 {
			return nil, tether.Spec{}, tether.Errorf(tether.CodeInvalidArgument, "method %q: want package.Service/Method", target)
		}
		svc, meth = target[:i], target[i+1:]
	}
	d, err := sc.find(ctx, svc)
	if err != nil {
		return nil, tether.Spec{}, err
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return nil, tether.Spec{}, tether.Errorf(tether.CodeInvalidArgument, "%s is not a service", svc)
	}
	md := sd.Methods().ByName(protoreflect.Name(meth))
	if md == nil {
		return nil, tether.Spec{}, tether.Errorf(tether.CodeNotFound, "service %s has no method %s", svc, meth)
	}
	spec := tether.Spec{Procedure: "/" + string(sd.FullName()) + "/" + meth, StreamType: streamType(md)}
	if opts, _ := md.Options().(*descriptorpb.MethodOptions); opts != nil {
		spec.IdempotencyLevel = tether.IdempotencyLevel(opts.GetIdempotencyLevel())
	}
	return md, spec, nil
}

func (cl *caller) call(ctx context.Context, target string) error {
	md, spec, err := resolveMethod(ctx, cl.sc, target)
	if err != nil {
		return err
	}
	m := &clientconn.Method{Spec: spec}

	header := cl.md.Clone()
	if header == nil {
		header = tether.Metadata{}
	}
	switch {
	case cl.key != "":
		header.Set(tether.MetadataIdempotencyKey, cl.key)
	case spec.IdempotencyLevel != tether.IdempotencyNoSideEffects && header.Get(tether.MetadataIdempotencyKey) == "":
		header.Set(tether.MetadataIdempotencyKey, client.NewIdempotencyKey())
	}
	if cl.verbose {
		fmt.Fprintf(cl.errOut, "Request metadata:\n%s\n", formatMetadata(header))
	}
	var respHeader, respTrailer tether.Metadata
	opts := []client.CallOption{client.FailFast(), client.WithoutRetries(), client.WithHeader(header)}

	dec := json.NewDecoder(cl.input)
	next := func() (proto.Message, error) {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return nil, io.EOF
			}
			return nil, tether.Errorf(tether.CodeInvalidArgument, "request: %v", err)
		}
		msg := dynamicpb.NewMessage(md.Input())
		if err := (protojson.UnmarshalOptions{Resolver: cl.resolver()}).Unmarshal(raw, msg); err != nil {
			// protojson varies the space after "proto:" on purpose.
			return nil, tether.Errorf(tether.CodeInvalidArgument, "request as %s: %s", md.Input().FullName(), strings.ReplaceAll(err.Error(), "\u00a0", " "))
		}
		return msg, nil
	}
	one := func() (proto.Message, error) { // the one request of unary and server-streaming calls
		msg, err := next()
		if errors.Is(err, io.EOF) {
			return dynamicpb.NewMessage(md.Input()), nil
		}
		return msg, err
	}

	if spec.StreamType == tether.StreamTypeUnary {
		req, err := one()
		if err != nil {
			return err
		}
		res := dynamicpb.NewMessage(md.Output())
		err = cl.conn.Invoke(ctx, m, req, res, append(opts, client.WithResponseHeader(&respHeader), client.WithResponseTrailer(&respTrailer))...)
		cl.showMetadata(respHeader, respTrailer)
		if err != nil {
			return err
		}
		return cl.print(res, true)
	}

	st, err := cl.conn.NewStream(ctx, m, opts...)
	if err != nil {
		return err
	}
	defer st.Close()
	var wg sync.WaitGroup
	var sendErr error
	switch spec.StreamType {
	case tether.StreamTypeServer:
		req, err := one()
		if err != nil {
			return err
		}
		if err := st.Send(req); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if err := st.CloseSend(); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
	default: // client and bidi streaming: send as the input arrives
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				req, err := next()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					sendErr = err
					_ = st.Close()
					return
				}
				if err := st.Send(req); err != nil {
					return // the call ended: Receive reports how
				}
			}
			_ = st.CloseSend()
		}()
	}
	var recvErr error
	for {
		res := dynamicpb.NewMessage(md.Output())
		if recvErr = st.Receive(res); recvErr != nil {
			break
		}
		if err := cl.print(res, spec.StreamType == tether.StreamTypeClient); err != nil {
			recvErr = err
			break
		}
	}
	_ = st.Close()
	wg.Wait()
	if h, err := st.Header(); err == nil {
		respHeader = h
	}
	cl.showMetadata(respHeader, st.Trailer())
	if sendErr != nil {
		return sendErr
	}
	if errors.Is(recvErr, io.EOF) {
		return nil
	}
	return recvErr
}

func streamType(md protoreflect.MethodDescriptor) tether.StreamType {
	switch {
	case md.IsStreamingClient() && md.IsStreamingServer():
		return tether.StreamTypeBidi
	case md.IsStreamingClient():
		return tether.StreamTypeClient
	case md.IsStreamingServer():
		return tether.StreamTypeServer
	}
	return tether.StreamTypeUnary
}

// resolver finds message types for Any fields: the schema's, then the
// ones compiled into the tool (well-known types, error details).
func (cl *caller) resolver() resolver { return newResolver(cl.sc) }

// print writes msg as JSON: indented, or on one line.
func (cl *caller) print(msg proto.Message, indent bool) error {
	b, err := protojson.MarshalOptions{EmitUnpopulated: cl.emitDefaults, Resolver: cl.resolver()}.Marshal(msg)
	if err != nil {
		return tether.Errorf(tether.CodeInternal, "response as JSON: %v", err)
	}
	// protojson varies its whitespace on purpose; normalize it so output is
	// stable (and one line per message for streams).
	var buf bytes.Buffer
	if indent {
		err = json.Indent(&buf, b, "", "  ")
	} else {
		err = json.Compact(&buf, b)
	}
	if err != nil {
		return tether.Errorf(tether.CodeInternal, "response as JSON: %v", err)
	}
	buf.WriteByte('\n')
	_, err = cl.out.Write(buf.Bytes())
	return err
}

// showMetadata prints the response headers and trailers with -v.
func (cl *caller) showMetadata(header, trailer tether.Metadata) {
	if !cl.verbose {
		return
	}
	fmt.Fprintf(cl.errOut, "Response headers:\n%s\nResponse trailers:\n%s\n", formatMetadata(header), formatMetadata(trailer))
}

// formatMetadata writes md one "key: value" line per value, keys sorted;
// values of -bin keys in base64.
func formatMetadata(md tether.Metadata) string {
	var b strings.Builder
	for _, k := range md.Keys() {
		for _, v := range md[k] {
			if tether.IsBinaryKey(k) {
				v = base64.StdEncoding.EncodeToString([]byte(v))
			}
			fmt.Fprintf(&b, "  %s: %s\n", k, v)
		}
	}
	if b.Len() == 0 {
		return "  (none)\n"
	}
	return b.String()
}

// decodeBase64 accepts standard and URL-safe base64, padded or not.
func decodeBase64(s string) ([]byte, error) {
	s = strings.TrimRight(s, "=")
	if strings.ContainsAny(s, "-_") {
		return base64.RawURLEncoding.DecodeString(s)
	}
	return base64.RawStdEncoding.DecodeString(s)
}

// resolver resolves message and extension types from a schema's files and
// then from the types linked into the tool.
type resolver struct{ dyn *dynamicpb.Types }

func newResolver(sc schema) resolver {
	if sc == nil || sc.files() == nil {
		return resolver{}
	}
	return resolver{dyn: dynamicpb.NewTypes(sc.files())}
}

// FindMessageByName implements protoregistry.MessageTypeResolver.
func (r resolver) FindMessageByName(name protoreflect.FullName) (protoreflect.MessageType, error) {
	if r.dyn != nil {
		if t, err := r.dyn.FindMessageByName(name); err == nil {
			return t, nil
		}
	}
	return protoregistry.GlobalTypes.FindMessageByName(name)
}

// FindMessageByURL implements protoregistry.MessageTypeResolver.
func (r resolver) FindMessageByURL(url string) (protoreflect.MessageType, error) {
	if r.dyn != nil {
		if t, err := r.dyn.FindMessageByURL(url); err == nil {
			return t, nil
		}
	}
	return protoregistry.GlobalTypes.FindMessageByURL(url)
}

// FindExtensionByName implements protoregistry.ExtensionTypeResolver.
func (r resolver) FindExtensionByName(field protoreflect.FullName) (protoreflect.ExtensionType, error) {
	if r.dyn != nil {
		if t, err := r.dyn.FindExtensionByName(field); err == nil {
			return t, nil
		}
	}
	return protoregistry.GlobalTypes.FindExtensionByName(field)
}

// FindExtensionByNumber implements protoregistry.ExtensionTypeResolver.
func (r resolver) FindExtensionByNumber(message protoreflect.FullName, field protoreflect.FieldNumber) (protoreflect.ExtensionType, error) {
	if r.dyn != nil {
		if t, err := r.dyn.FindExtensionByNumber(message, field); err == nil {
			return t, nil
		}
	}
	return protoregistry.GlobalTypes.FindExtensionByNumber(message, field)
}

// anyJSON renders an error detail as one line of JSON, or its type and
// size when its type is unknown.
func anyJSON(d *anypb.Any, r resolver) string {
	b, err := protojson.MarshalOptions{Resolver: r}.Marshal(d)
	if err != nil {
		return fmt.Sprintf("%s (%d bytes)", d.GetTypeUrl(), len(d.GetValue()))
	}
	var buf bytes.Buffer
	if json.Compact(&buf, b) != nil {
		return string(b)
	}
	return buf.String()
}
