package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/pluginpb"
)

// Issue 17, row 8 and item 2: an option the plugin does not know, such as
// path= for paths=, fails generation and names the known ones.
func TestUnknownOptionFails(t *testing.T) {
	set := loadImage(t)
	for _, param := range []string{
		"path=source_relative",
		"paths=source_relative,packge_suffix=tether",
		"paths=source_relative,package_suffix=te-ther",
	} {
		resp := runPlugin(t, &pluginpb.CodeGeneratorRequest{
			FileToGenerate: []string{"tethertest/v1/library.proto"},
			Parameter:      proto.String(param),
			ProtoFile:      set.GetFile(),
		})
		if resp.Error == nil {
			t.Errorf("%s: generation succeeded, want an error", param)
			continue
		}
		if n := len(resp.GetFile()); n != 0 {
			t.Errorf("%s: generated %d files despite the error", param, n)
		}
		t.Logf("%s: %s", param, resp.GetError())
	}
	resp := runPlugin(t, &pluginpb.CodeGeneratorRequest{
		FileToGenerate: []string{"tethertest/v1/library.proto"},
		Parameter:      proto.String("path=source_relative"),
		ProtoFile:      set.GetFile(),
	})
	if want := `unknown option "path" (the options are M<file>=<package>, annotate_code, module, package_suffix, paths)`; !strings.Contains(resp.GetError(), want) {
		t.Errorf("error = %q, want it to contain %q", resp.GetError(), want)
	}
}

// Issue 17, row 9 and item 3: with package_suffix, tether's code goes into
// its own package, so that it builds beside grpc-go's in the messages'
// package. grpcStub declares what protoc-gen-go-grpc would for
// LibraryService, among them the names tether gives its client.
func TestPackageSuffixBesideGRPC(t *testing.T) {
	dir := mustBuild(t, "tethertest/v1", "package_suffix=tether")
	got := readGenerated(t, dir, "tethertest/v1/tethertestv1tether/library_tether.pb.go")
	for _, want := range []string{
		"package tethertestv1tether",
		"func NewLibraryServiceClient(c *client.Client) LibraryServiceClient {",
		"GetBook(ctx context.Context, req *v1.GetBookRequest) (*v1.Book, error)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("generated code lacks %q", want)
		}
	}
	writeFile(t, filepath.Join(dir, "tethertest/v1/library_grpc.pb.go"), grpcStub)
	if out, err := goCommand(t, dir, "vet", "./tethertest/v1/..."); err != nil {
		t.Fatalf("tether's and grpc-go's code for one service: %v\n%s", err, out)
	}
}

const grpcStub = `package tethertestv1

// What protoc-gen-go-grpc declares for LibraryService, in part.

type LibraryServiceClient interface{}

func NewLibraryServiceClient() LibraryServiceClient { return nil }

type LibraryServiceServer interface{}

type UnimplementedLibraryServiceServer struct{}

const LibraryService_GetBook_FullMethodName = "/tethertest.v1.LibraryService/GetBook"
`

// generateOne runs the plugin on one test proto with parameter and returns
// the generated files by name.
func generateOne(t *testing.T, file, parameter string) map[string]*pluginpb.CodeGeneratorResponse_File {
	t.Helper()
	resp := runPlugin(t, &pluginpb.CodeGeneratorRequest{
		FileToGenerate: []string{file},
		Parameter:      proto.String(parameter),
		ProtoFile:      loadImage(t).GetFile(),
	})
	if resp.Error != nil {
		t.Fatalf("plugin error: %s", resp.GetError())
	}
	files := make(map[string]*pluginpb.CodeGeneratorResponse_File)
	for _, f := range resp.GetFile() {
		files[f.GetName()] = f
	}
	return files
}

// Item 5: every exported name generated for a deprecated service, and every
// one generated for a deprecated method, says so in its doc comment; the
// others do not.
func TestDeprecatedEverywhere(t *testing.T) {
	files := generateOne(t, "tethertest/edge/deprecated/v1/deprecated.proto", "paths=source_relative")
	src := files["tethertest/edge/deprecated/v1/deprecated_tether.pb.go"].GetContent()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "deprecated_tether.pb.go", src, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	check := func(name string, doc *ast.CommentGroup) {
		if !ast.IsExported(name) {
			return
		}
		want := strings.HasPrefix(name, "OldService") || strings.Contains(name, "UnimplementedOldService") ||
			strings.Contains(name, "RegisterOldService") || strings.Contains(name, "NewOldService") ||
			strings.Contains(name, "OldPing")
		got := doc != nil && strings.Contains(doc.Text(), "\nDeprecated: ")
		if got != want {
			t.Errorf("%s: deprecated in its doc comment = %v, want %v", name, got, want)
		}
	}
	n := 0
	for _, decl := range f.Decls {
		switch decl := decl.(type) {
		case *ast.FuncDecl:
			name := decl.Name.Name
			if decl.Recv != nil {
				recv := decl.Recv.List[0].Type
				if s, ok := recv.(*ast.StarExpr); ok {
					recv = s.X
				}
				if !ast.IsExported(recv.(*ast.Ident).Name) {
					// The client's implementation: its methods show in
					// the client interface, checked below.
					continue
				}
				name = recv.(*ast.Ident).Name + "." + name
			}
			check(name, decl.Doc)
			n++
		case *ast.GenDecl:
			for _, spec := range decl.Specs {
				switch spec := spec.(type) {
				case *ast.ValueSpec:
					doc := spec.Doc
					if doc == nil {
						doc = decl.Doc
					}
					for _, id := range spec.Names {
						check(id.Name, doc)
						n++
					}
				case *ast.TypeSpec:
					check(spec.Name.Name, decl.Doc)
					n++
					if it, ok := spec.Type.(*ast.InterfaceType); ok {
						for _, m := range it.Methods.List {
							check(spec.Name.Name+"."+m.Names[0].Name, m.Doc)
							n++
						}
					}
				}
			}
		}
	}
	if n < 20 {
		t.Errorf("checked %d names, want every exported one", n)
	}
}

// Item 5: the service's comment from the .proto is copied to the handler and
// client interfaces.
func TestServiceCommentsCopied(t *testing.T) {
	files := generateOne(t, "tethertest/edge/deprecated/v1/deprecated.proto", "paths=source_relative")
	src := files["tethertest/edge/deprecated/v1/deprecated_tether.pb.go"].GetContent()
	for _, typ := range []string{"OldServiceHandler", "OldServiceClient"} {
		want := "//\n// OldService is the service before NewService.\n//\n// It answers pings.\n//\n// Deprecated: Do not use.\ntype " + typ + " interface"
		if !strings.Contains(src, want) {
			t.Errorf("%s's doc comment does not end with the service's comment and the deprecation: want %q", typ, want)
		}
	}
}

// Item 5: with annotate_code, the plugin writes a .meta file with the
// GeneratedCodeInfo that maps the generated names to the .proto.
func TestAnnotateCode(t *testing.T) {
	files := generateOne(t, "tethertest/v1/library.proto", "paths=source_relative,annotate_code")
	name := "tethertest/v1/library_tether.pb.go"
	meta, ok := files[name+".meta"]
	if !ok {
		t.Fatalf("no %s.meta among %d files", name, len(files))
	}
	info := new(descriptorpb.GeneratedCodeInfo)
	if err := prototext.Unmarshal([]byte(meta.GetContent()), info); err != nil {
		t.Fatal(err)
	}
	content := files[name].GetContent()
	symbols := make(map[string][]int32)
	for _, a := range info.GetAnnotation() {
		if a.GetSourceFile() != "tethertest/v1/library.proto" {
			t.Errorf("annotation for %s", a.GetSourceFile())
		}
		symbols[content[a.GetBegin():a.GetEnd()]] = a.GetPath()
	}
	// A service is message 6 of a FileDescriptorProto, a method field 2 of
	// a ServiceDescriptorProto.
	for symbol, path := range map[string][]int32{
		"LibraryServiceName":                 {6, 0},
		"LibraryServiceHandler":              {6, 0},
		"UnimplementedLibraryServiceHandler": {6, 0},
		"RegisterLibraryServiceHandler":      {6, 0},
		"LibraryServiceClient":               {6, 0},
		"NewLibraryServiceClient":            {6, 0},
		"LibraryServiceGetBookProcedure":     {6, 0, 2, 0},
		"SyncBooks":                          nil, // several: checked for presence
	} {
		got, ok := symbols[symbol]
		if !ok {
			t.Errorf("no annotation for %s", symbol)
			continue
		}
		if path != nil && !equalPath(got, path) {
			t.Errorf("%s annotated with path %v, want %v", symbol, got, path)
		}
	}
}

func equalPath(a, b []int32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Item 5: generated code asserts the runtime's version with a constant that
// the tether package declares.
func TestRuntimeVersionCheck(t *testing.T) {
	files := generateOne(t, "tethertest/v1/library.proto", "paths=source_relative")
	if want := "const _ = tether." + runtimeVersionConst + "\n"; !strings.Contains(files["tethertest/v1/library_tether.pb.go"].GetContent(), want) {
		t.Errorf("generated code lacks %q", want)
	}
	f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(repoRoot(t), "version.go"), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if f.Scope.Lookup(runtimeVersionConst) == nil {
		t.Errorf("the tether package does not declare %s", runtimeVersionConst)
	}
}
