package reflection_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/examples/echo"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	reflectionv1 "github.com/tetherrpc/tether/gen/tether/reflection/v1"
	"github.com/tetherrpc/tether/server"
	"github.com/tetherrpc/tether/server/reflection"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// start serves the echo service and reflection (with opts) on 127.0.0.1 and
// returns a reflection client; srvOpts configure the server.
func start(t *testing.T, srvOpts []server.Option, opts ...reflection.Option) reflectionv1.ReflectionServiceClient {
	t.Helper()
	srv := server.New(srvOpts...)
	echov1.RegisterEchoServiceHandler(srv, &echo.Handler{})
	reflection.Register(srv, opts...)
	hs := httptest.NewServer(srv)
	t.Cleanup(func() { _ = srv.Close(); hs.Close() })
	c, err := client.New("ws"+strings.TrimPrefix(hs.URL, "http"), client.WithHandshakeHeader(http.Header{"Authorization": {"Bearer secret"}}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return reflectionv1.NewReflectionServiceClient(c)
}

func ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// files builds a registry from a response's descriptors: they must be
// complete (every import present) for this to succeed.
func files(t *testing.T, raw [][]byte) *protoregistryFiles {
	t.Helper()
	set := &descriptorpb.FileDescriptorSet{}
	for _, b := range raw {
		fdp := &descriptorpb.FileDescriptorProto{}
		if err := proto.Unmarshal(b, fdp); err != nil {
			t.Fatal(err)
		}
		set.File = append(set.File, fdp)
	}
	reg, err := protodesc.NewFiles(set)
	if err != nil {
		t.Fatalf("descriptors are not a complete set: %v", err)
	}
	return &protoregistryFiles{first: set.File[0].GetName(), find: reg.FindDescriptorByName}
}

type protoregistryFiles struct {
	first string
	find  func(protoreflect.FullName) (protoreflect.Descriptor, error)
}

// TestReflection: ListServices lists the registered services; the file
// containing a symbol and a file by name come with their dependencies, so a
// client can resolve methods and messages from them alone.
func TestReflection(t *testing.T) {
	rc := start(t, nil)
	ctx := ctx(t)
	list, err := rc.ListServices(ctx, &reflectionv1.ListServicesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"example.echo.v1.EchoService", "tether.reflection.v1.ReflectionService"}
	if !slices.Equal(list.GetServices(), want) {
		t.Errorf("ListServices = %q, want %q", list.GetServices(), want)
	}

	for _, sym := range []string{"example.echo.v1.EchoService", "example.echo.v1.EchoService.Say", "example.echo.v1.SayRequest", ".example.echo.v1.SayRequest.text"} {
		res, err := rc.FileContainingSymbol(ctx, &reflectionv1.FileContainingSymbolRequest{Symbol: sym})
		if err != nil {
			t.Fatalf("FileContainingSymbol(%s): %v", sym, err)
		}
		f := files(t, res.GetFileDescriptorProtos())
		if f.first != "example/echo/v1/echo.proto" {
			t.Errorf("FileContainingSymbol(%s) first file = %s", sym, f.first)
		}
		d, err := f.find("example.echo.v1.EchoService.Chat")
		if err != nil {
			t.Fatal(err)
		}
		if m := d.(protoreflect.MethodDescriptor); !m.IsStreamingClient() || !m.IsStreamingServer() {
			t.Errorf("Chat is not bidi in the served descriptor")
		}
	}

	// A file with imports: the reflection proto itself imports nothing, but
	// descriptor.proto-based options do; tether.proto imports any.proto.
	res, err := rc.FileByFilename(ctx, &reflectionv1.FileByFilenameRequest{Filename: "tether/v1/tether.proto"})
	if err != nil {
		t.Fatal(err)
	}
	f := files(t, res.GetFileDescriptorProtos())
	if _, err := f.find("google.protobuf.Any"); err != nil || len(res.GetFileDescriptorProtos()) < 2 {
		t.Errorf("tether.proto came without its dependencies (%d files): %v", len(res.GetFileDescriptorProtos()), err)
	}

	for _, call := range []func() error{
		func() error {
			_, err := rc.FileContainingSymbol(ctx, &reflectionv1.FileContainingSymbolRequest{Symbol: "no.such.Symbol"})
			return err
		},
		func() error {
			_, err := rc.FileByFilename(ctx, &reflectionv1.FileByFilenameRequest{Filename: "no/such.proto"})
			return err
		},
	} {
		if err := call(); tether.CodeOf(err) != tether.CodeNotFound {
			t.Errorf("unknown symbol or file: %v, want not_found", err)
		}
	}
}

// TestReflectionDisabled: WithEnabled(false) registers nothing.
func TestReflectionDisabled(t *testing.T) {
	rc := start(t, nil, reflection.WithEnabled(false))
	_, err := rc.ListServices(ctx(t), &reflectionv1.ListServicesRequest{})
	if tether.CodeOf(err) != tether.CodeUnimplemented {
		t.Fatalf("ListServices with reflection disabled: %v, want unimplemented", err)
	}
}

// TestReflectionAuthenticatedOnly: a connection without a principal is
// refused with unauthenticated; one with a principal is served.
func TestReflectionAuthenticatedOnly(t *testing.T) {
	rc := start(t, nil, reflection.WithAuthenticatedOnly())
	_, err := rc.ListServices(ctx(t), &reflectionv1.ListServicesRequest{})
	if tether.CodeOf(err) != tether.CodeUnauthenticated {
		t.Fatalf("anonymous ListServices: %v, want unauthenticated", err)
	}
	auth := server.WithAuthenticator(server.BearerToken(func(_ *http.Request, token string) (server.Identity, error) {
		return server.Identity{Principal: "alice"}, nil
	}))
	rc = start(t, []server.Option{auth}, reflection.WithAuthenticatedOnly())
	if _, err := rc.ListServices(ctx(t), &reflectionv1.ListServicesRequest{}); err != nil {
		t.Fatalf("authenticated ListServices: %v", err)
	}
	rc = start(t, []server.Option{auth}, reflection.WithAuthorizer(func(context.Context, server.Peer) error {
		return errors.New("not you")
	}))
	if _, err := rc.ListServices(ctx(t), &reflectionv1.ListServicesRequest{}); tether.CodeOf(err) != tether.CodePermissionDenied {
		t.Fatalf("ListServices refused by an authorizer: %v, want permission_denied", err)
	}
}
