package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"google.golang.org/protobuf/cmd/protoc-gen-go/internal_gengo"
	"google.golang.org/protobuf/compiler/protogen"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/pluginpb"
)

// The tests in this file generate code for the test protos, messages with
// protoc-gen-go and services with this plugin (both in process), into a
// temporary Go module that uses this repository's tether, and build it with
// the go command: a golden file shows what the generator writes, but only the
// compiler shows that it is valid Go beside protoc-gen-go's.

// testModulePath is the module the test protos' go_package options live in.
const testModulePath = "github.com/tetherrpc/tether/cmd/protoc-gen-go-tether/testdata/gen"

// repoRoot returns the directory of this repository's go.mod.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// newTestModule returns a temporary module at testModulePath that requires
// this repository's tether, with the same requirements and go.sum as the
// repository, so that building it needs no network.
func newTestModule(t *testing.T) string {
	t.Helper()
	root := repoRoot(t)
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	var mod strings.Builder
	mod.WriteString("module " + testModulePath + "\n\ngo 1.26.0\n\n")
	mod.WriteString("require github.com/tetherrpc/tether v0.0.0-00010101000000-000000000000\n\n")
	mod.WriteString("replace github.com/tetherrpc/tether => " + root + "\n\n")
	// The repository's require blocks, so that go.sum covers the build list.
	lines := strings.Split(string(gomod), "\n")
	for i := 0; i < len(lines); i++ {
		if strings.HasPrefix(lines[i], "require") {
			for ; i < len(lines); i++ {
				mod.WriteString(lines[i] + "\n")
				if lines[i] == ")" || !strings.HasSuffix(lines[i], "(") && strings.HasPrefix(lines[i], "require") {
					break
				}
			}
		}
	}
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "go.mod"), mod.String())
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "go.sum"), string(sum))
	return dir
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// generateInto runs protoc-gen-go and this plugin with parameter on files, as
// protoc would in one run, and writes their output into the module at dir.
// It returns this plugin's error, or fails the test if protoc-gen-go fails.
func generateInto(t *testing.T, dir string, set *descriptorpb.FileDescriptorSet, parameter string, files ...string) string {
	t.Helper()
	request := func(param string) *pluginpb.CodeGeneratorRequest {
		return &pluginpb.CodeGeneratorRequest{
			FileToGenerate: files,
			Parameter:      proto.String(param),
			ProtoFile:      set.GetFile(),
		}
	}
	write := func(resp *pluginpb.CodeGeneratorResponse) {
		for _, f := range resp.GetFile() {
			writeFile(t, filepath.Join(dir, filepath.FromSlash(f.GetName())), f.GetContent())
		}
	}

	// protoc-gen-go, as its main does.
	gen, err := protogen.Options{}.New(request("module=" + testModulePath))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range gen.Files {
		if f.Generate {
			internal_gengo.GenerateFile(gen, f)
		}
	}
	gen.SupportedFeatures = internal_gengo.SupportedFeatures
	resp := gen.Response()
	if resp.Error != nil {
		t.Fatalf("protoc-gen-go: %s", resp.GetError())
	}
	write(resp)

	// This plugin, as its main does.
	param := "module=" + testModulePath
	if parameter != "" {
		param += "," + parameter
	}
	resp = runPlugin(t, request(param))
	if resp.Error != nil {
		return resp.GetError()
	}
	write(resp)
	return ""
}

// runPlugin runs the plugin on req as main does, options included.
func runPlugin(t *testing.T, req *pluginpb.CodeGeneratorRequest) *pluginpb.CodeGeneratorResponse {
	t.Helper()
	opts := new(options)
	gen, err := protogen.Options{ParamFunc: opts.paramFunc()}.New(req)
	if err != nil {
		return &pluginpb.CodeGeneratorResponse{Error: proto.String(err.Error())}
	}
	if err := generateWith(gen, opts); err != nil {
		gen.Error(err)
	}
	return gen.Response()
}

// goCommand runs the go command in dir and returns its combined output.
func goCommand(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	cmd := exec.Command(goBin, args...)
	cmd.Dir = dir
	// No network: everything comes from the module cache, as for the
	// repository itself.
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off", "GOWORK=off")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// mustBuild generates the test protos under dir (a directory of
// testdata/proto) with parameter into a new module, then vets it, which
// type-checks every package, and returns the module's directory.
func mustBuild(t *testing.T, protoDir, parameter string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds generated code with the go command")
	}
	set := loadImage(t)
	files := testProtosUnder(set, protoDir)
	if len(files) == 0 {
		t.Fatalf("no test protos under %s: run ./scripts/generate.sh", protoDir)
	}
	dir := newTestModule(t)
	if msg := generateInto(t, dir, set, parameter, files...); msg != "" {
		t.Fatalf("plugin error: %s", msg)
	}
	if out, err := goCommand(t, dir, "vet", "./..."); err != nil {
		t.Fatalf("generated code for %s does not build: %v\n%s", protoDir, err, out)
	}
	return dir
}

// testProtosUnder returns the test protos under dir and the test protos they
// import, directly or not.
func testProtosUnder(set *descriptorpb.FileDescriptorSet, dir string) []string {
	byName := make(map[string]*descriptorpb.FileDescriptorProto)
	for _, f := range set.GetFile() {
		byName[f.GetName()] = f
	}
	seen := make(map[string]bool)
	var files []string
	var add func(name string)
	add = func(name string) {
		if seen[name] || !strings.HasPrefix(name, "tethertest/") {
			return
		}
		seen[name] = true
		for _, dep := range byName[name].GetDependency() {
			add(dep)
		}
		files = append(files, name)
	}
	for _, f := range set.GetFile() {
		if strings.HasPrefix(f.GetName(), dir+"/") {
			add(f.GetName())
		}
	}
	return files
}

// readGenerated returns the content of the generated file at rel in dir,
// with its comments unwrapped: each line that continues a comment joined to
// the one before.
func readGenerated(t *testing.T, dir, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(rel)))
	if err != nil {
		t.Fatal(err)
	}
	return unwrapComments(string(b))
}

func unwrapComments(s string) string {
	return continuedComment.ReplaceAllString(s, " ")
}

var continuedComment = regexp.MustCompile(`\n\s*// `)

// Issue 17, row 1: a file whose only service has no methods.
func TestEmptyServiceBuilds(t *testing.T) {
	mustBuild(t, "tethertest/edge/empty", "")
}

// Issue 17, row 2: Foo.BarBaz and FooBar.Baz.
func TestRunTogetherNamesBuild(t *testing.T) {
	dir := mustBuild(t, "tethertest/edge/runtogether", "")
	got := readGenerated(t, dir, "tethertest/edge/runtogether/v1/runtogether_tether.pb.go")
	for _, want := range []string{
		`FooBarBazProcedure = "/tethertest.edge.runtogether.v1.Foo/BarBaz"`,
		`FooBarBazProcedure_ = "/tethertest.edge.runtogether.v1.FooBar/Baz"`,
		"It is named FooBarBazProcedure_ because FooBarBazProcedure is generated by protoc-gen-go-tether for service tethertest.edge.runtogether.v1.Foo",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("generated code lacks %q", want)
		}
	}
}

// Issue 17, row 3: HTTPAdmin and HttpAdmin.
func TestInitialismServicesBuild(t *testing.T) {
	mustBuild(t, "tethertest/edge/initialisms", "")
}

// Issue 17, row 4: service User beside messages UserName and UserHandler
// (and UserClient).
func TestServiceBesideLikeNamedMessagesBuilds(t *testing.T) {
	dir := mustBuild(t, "tethertest/edge/messagenames", "")
	got := readGenerated(t, dir, "tethertest/edge/messagenames/v1/messagenames_tether.pb.go")
	for _, want := range []string{
		"type UserHandler_ interface",
		"const UserName_ = ",
		"type UserClient_ interface",
		"It is named UserHandler_ because UserHandler is message tethertest.edge.messagenames.v1.UserHandler in this Go package.",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("generated code lacks %q", want)
		}
	}
}

// Issue 17, row 5: request and response types from Go packages imported as
// req, opts, ctx, c and client, in every kind of call; the test served and
// calls them over a socket.
func TestImportNamesNotShadowed(t *testing.T) {
	dir := mustBuild(t, "tethertest/edge/importnames", "")
	writeFile(t, filepath.Join(dir, "tethertest/edge/importnames/v1/serve_test.go"), importNamesServeTest)
	if out, err := goCommand(t, dir, "test", "-count=1", "./tethertest/edge/importnames/v1"); err != nil {
		t.Fatalf("serving the generated code: %v\n%s", err, out)
	}
}

// Issue 17, row 6: a service Echo in two proto packages, generated into one
// Go package.
func TestSameServiceInTwoProtoPackagesBuilds(t *testing.T) {
	dir := mustBuild(t, "tethertest/edge/twopackages", "")
	a := readGenerated(t, dir, "tethertest/edge/twopackages/echo_a_tether.pb.go")
	b := readGenerated(t, dir, "tethertest/edge/twopackages/echo_b_tether.pb.go")
	if !strings.Contains(a, "type EchoHandler interface") || !strings.Contains(b, "type EchoHandler_ interface") {
		t.Errorf("want EchoHandler for tethertest.edge.twopackages.a.Echo and EchoHandler_ for the b one")
	}
}

// Issue 17, row 7: services Service and UnimplementedService, and a method
// named UnimplementedAlphaHandler: each builds, and an implementation that
// embeds the Unimplemented type implements the handler interface.
func TestUnimplementedNamesBuild(t *testing.T) {
	dir := mustBuild(t, "tethertest/edge/unimplemented", "")
	writeFile(t, filepath.Join(dir, "tethertest/edge/unimplemented/v1/embed_test.go"), `package unimplementedv1

// Implementations embed the Unimplemented types, whatever their names.
var (
	_ ServiceHandler               = struct{ UnimplementedServiceHandler }{}
	_ UnimplementedServiceHandler_ = struct{ UnimplementedUnimplementedServiceHandler }{}
	_ AlphaHandler                 = struct{ UnimplementedAlphaHandler_ }{}
)
`)
	if out, err := goCommand(t, dir, "vet", "./tethertest/edge/unimplemented/v1"); err != nil {
		t.Fatalf("embedding the Unimplemented types: %v\n%s", err, out)
	}
}

// importNamesServeTest serves ImportNamesService over a loopback socket and
// makes a call of each kind.
const importNamesServeTest = `package importnamesv1

import (
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	c "github.com/tetherrpc/tether/cmd/protoc-gen-go-tether/testdata/gen/tethertest/edge/importnames/c"
	tclient "github.com/tetherrpc/tether/cmd/protoc-gen-go-tether/testdata/gen/tethertest/edge/importnames/client"
	ctx "github.com/tetherrpc/tether/cmd/protoc-gen-go-tether/testdata/gen/tethertest/edge/importnames/ctx"
	opts "github.com/tetherrpc/tether/cmd/protoc-gen-go-tether/testdata/gen/tethertest/edge/importnames/opts"
	req "github.com/tetherrpc/tether/cmd/protoc-gen-go-tether/testdata/gen/tethertest/edge/importnames/req"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/server"
)

type handler struct{ UnimplementedImportNamesServiceHandler }

func (handler) Unary(_ context.Context, in *req.In) (*opts.Out, error) {
	return &opts.Out{Text: "unary " + in.Text}, nil
}

func (handler) ServerStream(_ context.Context, in *ctx.In, stream *server.ServerStream[c.Out]) error {
	return stream.Send(&c.Out{Text: "server " + in.Text})
}

func (handler) ClientStream(_ context.Context, stream *server.ClientStream[tclient.In]) (*req.Out, error) {
	var texts []string
	for {
		in, err := stream.Receive()
		if err == io.EOF {
			return &req.Out{Text: "client " + strings.Join(texts, "+")}, nil
		}
		if err != nil {
			return nil, err
		}
		texts = append(texts, in.Text)
	}
}

func (handler) BidiStream(_ context.Context, stream *server.BidiStream[c.In, ctx.Out]) error {
	for {
		in, err := stream.Receive()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&ctx.Out{Text: "bidi " + in.Text}); err != nil {
			return err
		}
	}
}

func TestServe(t *testing.T) {
	srv := server.New()
	RegisterImportNamesServiceHandler(srv, handler{})
	hs := httptest.NewServer(srv)
	defer func() {
		srv.Close()
		hs.Close()
	}()
	cc, err := client.New("ws" + strings.TrimPrefix(hs.URL, "http"))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	cl := NewImportNamesServiceClient(cc)
	bg, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	out, err := cl.Unary(bg, &req.In{Text: "a"})
	if err != nil || out.Text != "unary a" {
		t.Fatalf("Unary = %v, %v", out, err)
	}

	ss, err := cl.ServerStream(bg, &ctx.In{Text: "b"})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ss.Receive(); err != nil || got.Text != "server b" {
		t.Fatalf("ServerStream = %v, %v", got, err)
	}
	if _, err := ss.Receive(); err != io.EOF {
		t.Fatalf("ServerStream end = %v, want io.EOF", err)
	}

	cs, err := cl.ClientStream(bg)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"c", "d"} {
		if err := cs.Send(&tclient.In{Text: s}); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := cs.CloseAndReceive(); err != nil || got.Text != "client c+d" {
		t.Fatalf("ClientStream = %v, %v", got, err)
	}

	bs, err := cl.BidiStream(bg)
	if err != nil {
		t.Fatal(err)
	}
	if err := bs.Send(&c.In{Text: "e"}); err != nil {
		t.Fatal(err)
	}
	if got, err := bs.Receive(); err != nil || got.Text != "bidi e" {
		t.Fatalf("BidiStream = %v, %v", got, err)
	}
	if err := bs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := bs.Receive(); err != io.EOF {
		t.Fatalf("BidiStream end = %v, want io.EOF", err)
	}
}
`
