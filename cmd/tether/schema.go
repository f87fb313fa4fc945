package main

// Where list, describe and call find the descriptors of a server's services:
// its reflection service (server/reflection), or, without reflection, a
// descriptor set (--descriptor-set, e.g. a buf image) or .proto files
// (--proto, compiled in-process).

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	reflectionv1 "github.com/tetherrpc/tether/gen/tether/reflection/v1"
)

// connFlags are the flags of the commands that talk to a server.
type connFlags struct {
	headers          headerFlag
	handshakeHeaders headerFlag
	timeout          time.Duration
	cacert           string
	insecure         bool
	descriptorSet    string
	protoFiles       stringsFlag
	importPaths      stringsFlag
}

func (f *connFlags) register(fs *flag.FlagSet) {
	fs.Var(&f.headers, "H", "call metadata `'key: value'` (repeatable); values of keys ending in -bin are base64")
	fs.Var(&f.handshakeHeaders, "handshake-header", "HTTP header `'Key: value'` for the WebSocket upgrade, e.g. 'Authorization: Bearer t' (repeatable)")
	fs.DurationVar(&f.timeout, "timeout", 0, "deadline of the command's calls, e.g. 5s (default: none)")
	fs.StringVar(&f.cacert, "cacert", "", "PEM file of the CA certificates that sign a wss:// server's certificate")
	fs.BoolVar(&f.insecure, "insecure", false, "skip verifying a wss:// server's certificate")
	fs.StringVar(&f.descriptorSet, "descriptor-set", "", "FileDescriptorSet or buf image `file` to read schemas from instead of reflection")
	fs.Var(&f.protoFiles, "proto", "`.proto file` to compile and read schemas from instead of reflection (repeatable)")
	fs.Var(&f.importPaths, "import-path", "`directory` to find --proto files and their imports in (repeatable; default .)")
}

// headerFlag collects repeated 'key: value' flags.
type headerFlag []string

func (h *headerFlag) String() string { return strings.Join(*h, ", ") }
func (h *headerFlag) Set(v string) error {
	if k, _, ok := strings.Cut(v, ":"); !ok || strings.TrimSpace(k) == "" {
		return fmt.Errorf("want 'key: value', got %q", v)
	}
	*h = append(*h, v)
	return nil
}

// metadata returns the headers as call metadata; -bin values are base64
// (standard or URL encoding, padded or not) and decoded to raw bytes.
func (h headerFlag) metadata() (tether.Metadata, error) {
	md := tether.Metadata{}
	for _, kv := range h {
		k, v, _ := strings.Cut(kv, ":")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if tether.IsBinaryKey(k) {
			b, err := decodeBase64(v)
			if err != nil {
				return nil, fmt.Errorf("-H %s: values of -bin keys are base64: %v", k, err)
			}
			v = string(b)
		}
		md.Add(k, v)
	}
	return md, nil
}

// stringsFlag collects repeated flags.
type stringsFlag []string

func (s *stringsFlag) String() string     { return strings.Join(*s, ",") }
func (s *stringsFlag) Set(v string) error { *s = append(*s, v); return nil }

// dial connects to url as the flags say. The client fails calls at once when
// it cannot connect (FailFast in calls), so an unreachable server is
// unavailable rather than a hang.
func (f *connFlags) dial(url string) (*client.Client, error) {
	opts := []client.Option{client.WithLogger(slog.New(slog.DiscardHandler))}
	if len(f.handshakeHeaders) > 0 {
		h := http.Header{}
		for _, kv := range f.handshakeHeaders {
			k, v, _ := strings.Cut(kv, ":")
			h.Add(strings.TrimSpace(k), strings.TrimSpace(v))
		}
		opts = append(opts, client.WithHandshakeHeader(h))
	}
	if f.cacert != "" || f.insecure {
		cfg := &tls.Config{InsecureSkipVerify: f.insecure} //nolint:gosec // the user asked for it
		if f.cacert != "" {
			pem, err := os.ReadFile(f.cacert)
			if err != nil {
				return nil, err
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("--cacert %s: no PEM certificates", f.cacert)
			}
			cfg.RootCAs = pool
		}
		opts = append(opts, client.WithTLSConfig(cfg))
	}
	return client.New(url, opts...)
}

// context returns the context of the command's calls: with --timeout, its
// deadline.
func (f *connFlags) context() (context.Context, context.CancelFunc) {
	if f.timeout > 0 {
		return context.WithTimeout(context.Background(), f.timeout)
	}
	return context.WithCancel(context.Background())
}

// schema finds descriptors by name.
type schema interface {
	// services returns the full names of the services, sorted.
	services(ctx context.Context) ([]string, error)
	// find returns the descriptor of a fully qualified name.
	find(ctx context.Context, name string) (protoreflect.Descriptor, error)
	// files is everything found so far, for JSON of Any fields and details.
	files() *protoregistry.Files
}

// newSchema returns the schema source the flags choose; c is used for
// reflection.
func (f *connFlags) newSchema(c *client.Client) (schema, error) {
	switch {
	case f.descriptorSet != "" && len(f.protoFiles) > 0:
		return nil, errors.New("give --descriptor-set or --proto, not both")
	case f.descriptorSet != "":
		b, err := os.ReadFile(f.descriptorSet)
		if err != nil {
			return nil, err
		}
		set := &descriptorpb.FileDescriptorSet{}
		if err := proto.Unmarshal(b, set); err != nil {
			return nil, fmt.Errorf("--descriptor-set %s: %v", f.descriptorSet, err)
		}
		return newStaticSchema(set)
	case len(f.protoFiles) > 0:
		return compileProtos(f.importPaths, f.protoFiles)
	}
	return &reflectSchema{rc: reflectionv1.NewReflectionServiceClient(c), fdps: map[string]*descriptorpb.FileDescriptorProto{}, reg: new(protoregistry.Files)}, nil
}

// staticSchema serves descriptors from a set read at start-up.
type staticSchema struct {
	reg *protoregistry.Files
}

func newStaticSchema(set *descriptorpb.FileDescriptorSet) (*staticSchema, error) {
	reg, err := protodesc.NewFiles(set)
	if err != nil {
		return nil, fmt.Errorf("descriptors: %v", err)
	}
	return &staticSchema{reg: reg}, nil
}

func (s *staticSchema) services(context.Context) ([]string, error) {
	var out []string
	s.reg.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		for i := range fd.Services().Len() {
			out = append(out, string(fd.Services().Get(i).FullName()))
		}
		return true
	})
	slices.Sort(out)
	return out, nil
}

func (s *staticSchema) find(_ context.Context, name string) (protoreflect.Descriptor, error) {
	d, err := s.reg.FindDescriptorByName(protoreflect.FullName(strings.TrimPrefix(name, ".")))
	if err != nil {
		return nil, tether.Errorf(tether.CodeNotFound, "symbol %q not found in the descriptors", name)
	}
	return d, nil
}

func (s *staticSchema) files() *protoregistry.Files { return s.reg }

// reflectSchema asks the server's reflection service, collecting the files
// it has been sent.
type reflectSchema struct {
	rc   reflectionv1.ReflectionServiceClient
	fdps map[string]*descriptorpb.FileDescriptorProto
	reg  *protoregistry.Files
}

var reflectionOpts = []client.CallOption{client.FailFast()}

func (s *reflectSchema) services(ctx context.Context) ([]string, error) {
	res, err := s.rc.ListServices(ctx, &reflectionv1.ListServicesRequest{}, reflectionOpts...)
	if err != nil {
		return nil, reflectionError(err)
	}
	return res.GetServices(), nil
}

func (s *reflectSchema) find(ctx context.Context, name string) (protoreflect.Descriptor, error) {
	full := protoreflect.FullName(strings.TrimPrefix(name, "."))
	if d, err := s.reg.FindDescriptorByName(full); err == nil {
		return d, nil
	}
	res, err := s.rc.FileContainingSymbol(ctx, &reflectionv1.FileContainingSymbolRequest{Symbol: string(full)}, reflectionOpts...)
	if err != nil {
		return nil, reflectionError(err)
	}
	for _, b := range res.GetFileDescriptorProtos() {
		fdp := &descriptorpb.FileDescriptorProto{}
		if err := proto.Unmarshal(b, fdp); err != nil {
			return nil, tether.Errorf(tether.CodeInternal, "reflection sent a bad descriptor: %v", err)
		}
		s.fdps[fdp.GetName()] = fdp
	}
	set := &descriptorpb.FileDescriptorSet{}
	for _, fdp := range s.fdps {
		set.File = append(set.File, fdp)
	}
	reg, err := protodesc.NewFiles(set)
	if err != nil {
		return nil, tether.Errorf(tether.CodeInternal, "reflection sent incomplete descriptors: %v", err)
	}
	s.reg = reg
	d, err := reg.FindDescriptorByName(full)
	if err != nil {
		return nil, tether.Errorf(tether.CodeNotFound, "symbol %q not found", name)
	}
	return d, nil
}

func (s *reflectSchema) files() *protoregistry.Files { return s.reg }

// reflectionError says that a server without reflection needs
// --descriptor-set or --proto.
func reflectionError(err error) error {
	if tether.CodeOf(err) == tether.CodeUnimplemented {
		return tether.Errorf(tether.CodeUnimplemented, "the server does not serve reflection (server/reflection); use --descriptor-set or --proto: %v", err)
	}
	return err
}

// exitCode maps a call's outcome to the process's exit code: 0 for OK, and
// 64 + the status code for a failed call (as grpcurl does), so that each code
// has its own: invalid_argument 67, deadline_exceeded 68, not_found 69,
// unimplemented 76, unavailable 78, ...
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	return exitStatusBase + int(tether.CodeOf(err))
}

// exitStatusBase plus a status code is the exit code of a failed call.
const exitStatusBase = 64

// printError writes a failed call's code, message and details to w.
func printError(w io.Writer, err error, sc schema) {
	e := tether.AsError(err)
	fmt.Fprintf(w, "ERROR:\n  Code: %s\n  Message: %s\n", e.Code(), e.Message())
	if len(e.Details()) > 0 {
		fmt.Fprintln(w, "  Details:")
		r := newResolver(sc)
		for i, d := range e.Details() {
			fmt.Fprintf(w, "  %d) %s\n", i+1, anyJSON(d, r))
		}
	}
}
