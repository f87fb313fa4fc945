// Package reflection serves tether's server reflection service
// (tether.reflection.v1.ReflectionService): the services a server serves and
// the file descriptors that describe them, so that tools such as
// `tether list`, `tether describe` and `tether call` can call any method
// without compiled-in code, as grpcurl does with gRPC's reflection.
//
// Register it with one call, after or before the application's services:
//
//	reflection.Register(srv)
//
// Descriptors come from protoregistry.GlobalFiles, where generated code
// registers its files (WithFiles chooses another registry). Reflection
// shows a server's whole API, including methods a client may not be allowed
// to call; WithAuthenticatedOnly refuses it to connections without a
// principal, WithAuthorizer decides per caller, and WithEnabled(false)
// (say, from a configuration flag) registers nothing.
package reflection

import (
	"context"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/tetherrpc/tether"
	reflectionv1 "github.com/tetherrpc/tether/gen/tether/reflection/v1"
	"github.com/tetherrpc/tether/server"
)

// Option configures the reflection service.
type Option func(*config)

type config struct {
	enabled   bool
	files     *protoregistry.Files
	authorize func(ctx context.Context, peer server.Peer) error
}

// WithEnabled turns the service on (the default) or off: Register with
// WithEnabled(false) registers nothing, and clients get unimplemented.
func WithEnabled(on bool) Option { return func(c *config) { c.enabled = on } }

// WithAuthenticatedOnly refuses reflection, with unauthenticated, to calls
// on connections that the server's Authenticator gave no principal
// (server.Peer.Principal is nil).
func WithAuthenticatedOnly() Option {
	return WithAuthorizer(func(_ context.Context, p server.Peer) error {
		if p.Principal == nil {
			return tether.Errorf(tether.CodeUnauthenticated, "reflection: authentication required")
		}
		return nil
	})
}

// WithAuthorizer runs authorize before every reflection call; an error
// fails the call (a *tether.Error keeps its code, any other error is
// permission_denied). It replaces WithAuthenticatedOnly.
func WithAuthorizer(authorize func(ctx context.Context, peer server.Peer) error) Option {
	return func(c *config) { c.authorize = authorize }
}

// WithFiles serves descriptors from files instead of
// protoregistry.GlobalFiles.
func WithFiles(files *protoregistry.Files) Option { return func(c *config) { c.files = files } }

// Register serves the reflection service on s, unless WithEnabled(false).
// ListServices reports the services registered on s at the time of each
// call.
func Register(s *server.Server, opts ...Option) {
	c := config{enabled: true, files: protoregistry.GlobalFiles}
	for _, o := range opts {
		o(&c)
	}
	if !c.enabled {
		return
	}
	reflectionv1.RegisterReflectionServiceHandler(s, &handler{cfg: c, srv: s})
}

type handler struct {
	reflectionv1.UnimplementedReflectionServiceHandler
	cfg   config
	srv   *server.Server
	cache sync.Map // file path -> []byte, the serialized FileDescriptorProto
}

func (h *handler) check(ctx context.Context) error {
	if h.cfg.authorize == nil {
		return nil
	}
	ci, ok := server.CallInfoFromContext(ctx)
	if !ok {
		return tether.Errorf(tether.CodeInternal, "reflection: no call info")
	}
	if err := h.cfg.authorize(ctx, ci.Peer()); err != nil {
		if e, ok := err.(*tether.Error); ok {
			return e
		}
		return tether.NewError(tether.CodePermissionDenied, err)
	}
	return nil
}

// ListServices implements reflectionv1.ReflectionServiceHandler.
func (h *handler) ListServices(ctx context.Context, _ *reflectionv1.ListServicesRequest) (*reflectionv1.ListServicesResponse, error) {
	if err := h.check(ctx); err != nil {
		return nil, err
	}
	res := &reflectionv1.ListServicesResponse{}
	for _, p := range h.srv.Procedures() { // sorted, so services come sorted
		svc, _, ok := strings.Cut(strings.TrimPrefix(p, "/"), "/")
		if !ok {
			continue
		}
		if n := len(res.Services); n == 0 || res.Services[n-1] != svc {
			res.Services = append(res.Services, svc)
		}
	}
	return res, nil
}

// FileByFilename implements reflectionv1.ReflectionServiceHandler.
func (h *handler) FileByFilename(ctx context.Context, req *reflectionv1.FileByFilenameRequest) (*reflectionv1.FileByFilenameResponse, error) {
	if err := h.check(ctx); err != nil {
		return nil, err
	}
	fd, err := h.cfg.files.FindFileByPath(req.GetFilename())
	if err != nil {
		return nil, tether.Errorf(tether.CodeNotFound, "reflection: file %q not found", req.GetFilename())
	}
	files, err := h.withDeps(fd)
	if err != nil {
		return nil, err
	}
	return &reflectionv1.FileByFilenameResponse{FileDescriptorProtos: files}, nil
}

// FileContainingSymbol implements reflectionv1.ReflectionServiceHandler.
func (h *handler) FileContainingSymbol(ctx context.Context, req *reflectionv1.FileContainingSymbolRequest) (*reflectionv1.FileContainingSymbolResponse, error) {
	if err := h.check(ctx); err != nil {
		return nil, err
	}
	name := protoreflect.FullName(strings.TrimPrefix(req.GetSymbol(), "."))
	d, err := h.cfg.files.FindDescriptorByName(name)
	if err != nil || !name.IsValid() {
		return nil, tether.Errorf(tether.CodeNotFound, "reflection: symbol %q not found", req.GetSymbol())
	}
	files, err := h.withDeps(d.ParentFile())
	if err != nil {
		return nil, err
	}
	return &reflectionv1.FileContainingSymbolResponse{FileDescriptorProtos: files}, nil
}

// withDeps returns fd and its transitive dependencies, serialized, fd first
// and each file once.
func (h *handler) withDeps(fd protoreflect.FileDescriptor) ([][]byte, error) {
	var out [][]byte
	seen := map[string]bool{}
	queue := []protoreflect.FileDescriptor{fd}
	for len(queue) > 0 {
		f := queue[0]
		queue = queue[1:]
		if seen[f.Path()] || f.IsPlaceholder() {
			continue
		}
		seen[f.Path()] = true
		b, err := h.serialize(f)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
		imports := f.Imports()
		for i := range imports.Len() {
			queue = append(queue, imports.Get(i).FileDescriptor)
		}
	}
	return out, nil
}

func (h *handler) serialize(f protoreflect.FileDescriptor) ([]byte, error) {
	if b, ok := h.cache.Load(f.Path()); ok {
		return b.([]byte), nil
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(protodesc.ToFileDescriptorProto(f))
	if err != nil {
		return nil, tether.Errorf(tether.CodeInternal, "reflection: encode %s: %v", f.Path(), err)
	}
	h.cache.Store(f.Path(), b)
	return b, nil
}
