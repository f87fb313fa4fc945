package main

import (
	"flag"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/compiler/protogen"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/pluginpb"

	"github.com/tetherrpc/tether"
)

// The tests run the plugin on testdata/tethertest.binpb, a FileDescriptorSet
// compiled by ./scripts/generate.sh from the files in testdata/proto (with
// their imports and comments), and compare its output with the files in
// testdata/golden. After changing the generator or the test protos, run
//
//	./scripts/generate.sh
//	go test ./cmd/protoc-gen-go-tether -update
//
// and review the changes to testdata/golden.

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

const (
	imagePath  = "testdata/tethertest.binpb"
	goldenDir  = "testdata/golden"
	invalidDir = "tethertest/invalid/v1/"
)

// loadImage reads the test protos' descriptors.
func loadImage(t *testing.T) *descriptorpb.FileDescriptorSet {
	t.Helper()
	b, err := os.ReadFile(imagePath)
	if err != nil {
		t.Fatal(err)
	}
	set := new(descriptorpb.FileDescriptorSet)
	if err := proto.Unmarshal(b, set); err != nil {
		t.Fatalf("%s: %v", imagePath, err)
	}
	return set
}

// testFiles returns the test protos in the image: those not imported from
// elsewhere.
func testFiles(set *descriptorpb.FileDescriptorSet) (valid, invalid []string) {
	for _, f := range set.GetFile() {
		switch name := f.GetName(); {
		case strings.HasPrefix(name, invalidDir):
			invalid = append(invalid, name)
		case strings.HasPrefix(name, "tethertest/"):
			valid = append(valid, name)
		}
	}
	return valid, invalid
}

// run runs the plugin as protoc would, generating files.
func run(t *testing.T, set *descriptorpb.FileDescriptorSet, files ...string) *pluginpb.CodeGeneratorResponse {
	t.Helper()
	req := &pluginpb.CodeGeneratorRequest{
		FileToGenerate: files,
		Parameter:      proto.String("paths=source_relative"),
		ProtoFile:      set.GetFile(),
	}
	gen, err := protogen.Options{}.New(req)
	if err != nil {
		t.Fatal(err)
	}
	// As protogen.Options.Run does.
	if err := generate(gen); err != nil {
		gen.Error(err)
	}
	return gen.Response()
}

func TestGolden(t *testing.T) {
	set := loadImage(t)
	valid, _ := testFiles(set)
	resp := run(t, set, valid...)
	if resp.Error != nil {
		t.Fatalf("plugin error: %s", resp.GetError())
	}
	got := make(map[string]string)
	for _, f := range resp.GetFile() {
		if f.GetInsertionPoint() != "" {
			t.Errorf("%s: unexpected insertion point %q", f.GetName(), f.GetInsertionPoint())
		}
		got[f.GetName()] = f.GetContent()
	}

	if *update {
		if err := os.RemoveAll(goldenDir); err != nil {
			t.Fatal(err)
		}
		for name, content := range got {
			path := filepath.Join(goldenDir, filepath.FromSlash(name))
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("wrote %d golden files to %s", len(got), goldenDir)
		return
	}

	want := make(map[string]string)
	err := filepath.WalkDir(goldenDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(goldenDir, path)
		want[filepath.ToSlash(rel)] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range sortedKeys(got) {
		w, ok := want[name]
		switch {
		case !ok:
			t.Errorf("generated %s, which has no golden file (run go test -update)", name)
		case got[name] != w:
			t.Errorf("%s differs from its golden file (run go test -update and review the diff):\n%s",
				name, firstDifference(got[name], w))
		}
	}
	for _, name := range sortedKeys(want) {
		if _, ok := got[name]; !ok {
			t.Errorf("golden file %s was not generated (run go test -update)", name)
		}
	}
}

// TestGoldenFiles checks the set of generated files, so that TestGolden
// -update cannot silently drop or add one.
func TestGoldenFiles(t *testing.T) {
	set := loadImage(t)
	valid, _ := testFiles(set)
	resp := run(t, set, valid...)
	var names []string
	for _, f := range resp.GetFile() {
		names = append(names, f.GetName())
	}
	want := []string{
		"tethertest/edge/deprecated/v1/deprecated_tether.pb.go",
		"tethertest/edge/empty/v1/empty_tether.pb.go",
		"tethertest/edge/importnames/v1/importnames_tether.pb.go",
		"tethertest/edge/initialisms/v1/initialisms_tether.pb.go",
		"tethertest/edge/messagenames/v1/messagenames_tether.pb.go",
		"tethertest/edge/runtogether/v1/runtogether_tether.pb.go",
		"tethertest/edge/twopackages/a/echo_a_tether.pb.go",
		"tethertest/edge/twopackages/b/echo_b_tether.pb.go",
		"tethertest/edge/unimplemented/v1/unimplemented_tether.pb.go",
		"tethertest/editions/v1/editions_tether.pb.go",
		"tethertest/v1/library_tether.pb.go",
	}
	if !slices.Equal(names, want) {
		t.Errorf("generated %q, want %q", names, want)
	}
}

func TestNoServicesNoOutput(t *testing.T) {
	set := loadImage(t)
	resp := run(t, set, "tethertest/common/v1/common.proto")
	if resp.Error != nil {
		t.Fatalf("plugin error: %s", resp.GetError())
	}
	if n := len(resp.GetFile()); n != 0 {
		t.Errorf("generated %d files for a file without services, want none", n)
	}
}

func TestSupportedFeatures(t *testing.T) {
	resp := run(t, loadImage(t), "tethertest/v1/library.proto")
	want := uint64(pluginpb.CodeGeneratorResponse_FEATURE_PROTO3_OPTIONAL | pluginpb.CodeGeneratorResponse_FEATURE_SUPPORTS_EDITIONS)
	if got := resp.GetSupportedFeatures(); got != want {
		t.Errorf("supported features = %b, want %b", got, want)
	}
	if got := descriptorpb.Edition(resp.GetMinimumEdition()); got != descriptorpb.Edition_EDITION_PROTO2 {
		t.Errorf("minimum edition = %v, want EDITION_PROTO2", got)
	}
	if got := descriptorpb.Edition(resp.GetMaximumEdition()); got != descriptorpb.Edition_EDITION_2024 {
		t.Errorf("maximum edition = %v, want EDITION_2024", got)
	}
}

func TestCompilerVersionInHeader(t *testing.T) {
	set := loadImage(t)
	req := &pluginpb.CodeGeneratorRequest{
		FileToGenerate:  []string{"tethertest/v1/library.proto"},
		Parameter:       proto.String("paths=source_relative"),
		ProtoFile:       set.GetFile(),
		CompilerVersion: &pluginpb.Version{Major: proto.Int32(3), Minor: proto.Int32(21), Patch: proto.Int32(12), Suffix: proto.String("rc1")},
	}
	gen, err := protogen.Options{}.New(req)
	if err != nil {
		t.Fatal(err)
	}
	if err := generate(gen); err != nil {
		t.Fatal(err)
	}
	resp := gen.Response()
	want := "// - protoc               v3.21.12-rc1\n"
	if content := resp.GetFile()[0].GetContent(); !strings.Contains(content, want) {
		t.Errorf("header does not contain %q:\n%s", want, content[:min(len(content), 300)])
	}
}

func TestInvalidRetryPolicies(t *testing.T) {
	wantErrors := map[string]string{
		"bad_nanos.proto":                 "initial_backoff {seconds: 1, nanos: -5} is not a valid google.protobuf.Duration",
		"bidi_dead_letter.proto":          "dead_letter is not supported on bidi-streaming method Sync: " + streamDeadLetterReason,
		"client_stream_dead_letter.proto": "dead_letter is not supported on client-streaming method Upload: " + streamDeadLetterReason,
		"duplicate_code.proto":            "retryable_codes: CODE_UNAVAILABLE is listed twice",
		"huge_attempts.proto":             "max_attempts 4294967295 is too large",
		"huge_backoff.proto":              "max_backoff {seconds: 315576000000} is longer than a time.Duration holds",
		"infinite_multiplier.proto":       "backoff_multiplier must be a positive number, not +Inf",
		"inverted_backoff.proto":          "max_backoff 1s is less than initial_backoff 2s",
		"negative_backoff.proto":          "initial_backoff {seconds: -1, nanos: 0} is not positive",
		"negative_multiplier.proto":       "backoff_multiplier must be a positive number, not -2",
		"ok_code.proto":                   "retryable_codes: CODE_OK is not an error code",
		"unknown_code.proto":              "retryable_codes: 99 is not a code tether defines",
		"zero_backoff.proto":              "max_backoff {seconds: 0, nanos: 0} is not positive",
		"resumable_unary.proto":           "is for streaming methods; unary method Get cannot be resumed (retry it instead)",
		"resume_from_cursor_unary.proto":  "is for streaming methods; unary method Get cannot be resumed (retry it instead)",
	}

	set := loadImage(t)
	_, invalid := testFiles(set)
	if len(invalid) != len(wantErrors) {
		t.Errorf("%d invalid test protos, want %d", len(invalid), len(wantErrors))
	}
	for _, name := range invalid {
		t.Run(strings.TrimPrefix(name, invalidDir), func(t *testing.T) {
			want, ok := wantErrors[strings.TrimPrefix(name, invalidDir)]
			if !ok {
				t.Fatalf("no expected error for %s", name)
			}
			resp := run(t, set, name)
			// The error names the file and the method.
			prefix := name + ": tethertest.invalid.v1."
			suffix := ": option (tether.v1.retry): " + want
			if strings.Contains(name, "resumable_") {
				suffix = ": option (tether.v1.resumable) " + want
			}
			if strings.Contains(name, "resume_from_cursor_") {
				suffix = ": option (tether.v1.resume_from_cursor) " + want
			}
			if got := resp.GetError(); !strings.HasPrefix(got, prefix) || !strings.HasSuffix(got, suffix) {
				t.Errorf("error = %q, want %q...%q", got, prefix, want)
			}
			if n := len(resp.GetFile()); n != 0 {
				t.Errorf("generated %d files despite the error", n)
			}
		})
	}
}

// TestCodeIdents checks codeIdents against the tether.Code constants and
// the tether.v1.Code enum.
func TestCodeIdents(t *testing.T) {
	consts := map[string]tether.Code{
		"CodeCanceled":           tether.CodeCanceled,
		"CodeUnknown":            tether.CodeUnknown,
		"CodeInvalidArgument":    tether.CodeInvalidArgument,
		"CodeDeadlineExceeded":   tether.CodeDeadlineExceeded,
		"CodeNotFound":           tether.CodeNotFound,
		"CodeAlreadyExists":      tether.CodeAlreadyExists,
		"CodePermissionDenied":   tether.CodePermissionDenied,
		"CodeResourceExhausted":  tether.CodeResourceExhausted,
		"CodeFailedPrecondition": tether.CodeFailedPrecondition,
		"CodeAborted":            tether.CodeAborted,
		"CodeOutOfRange":         tether.CodeOutOfRange,
		"CodeUnimplemented":      tether.CodeUnimplemented,
		"CodeInternal":           tether.CodeInternal,
		"CodeUnavailable":        tether.CodeUnavailable,
		"CodeDataLoss":           tether.CodeDataLoss,
		"CodeUnauthenticated":    tether.CodeUnauthenticated,
	}
	for n, name := range codeIdents {
		if n == 0 {
			if name != "" {
				t.Errorf("codeIdents[0] = %q, want none: OK is not retryable", name)
			}
			continue
		}
		if c, ok := consts[name]; !ok || c != tether.Code(n) {
			t.Errorf("codeIdents[%d] = %q, which is not the tether.Code %d", n, name, n)
		}
	}
	if len(codeIdents) != len(consts)+1 {
		t.Errorf("codeIdents has %d codes, want %d", len(codeIdents)-1, len(consts))
	}

	// The enum in tether.proto has the same numbers.
	files, err := protodesc.NewFiles(loadImage(t))
	if err != nil {
		t.Fatal(err)
	}
	d, err := files.FindDescriptorByName(codeEnumName)
	if err != nil {
		t.Fatal(err)
	}
	values := d.(protoreflect.EnumDescriptor).Values()
	if values.Len() != len(codeIdents) {
		t.Errorf("%s has %d values, codeIdents %d", codeEnumName, values.Len(), len(codeIdents))
	}
	for i := range values.Len() {
		v := values.Get(i)
		// CODE_DEADLINE_EXCEEDED is CodeDeadlineExceeded.
		want := "Code"
		for _, word := range strings.Split(strings.TrimPrefix(string(v.Name()), "CODE_"), "_") {
			want += word[:1] + strings.ToLower(word[1:])
		}
		if int(v.Number()) < len(codeIdents) && v.Number() != 0 && codeIdents[v.Number()] != want {
			t.Errorf("%s = %d, but codeIdents[%d] = %q", v.Name(), v.Number(), v.Number(), codeIdents[v.Number()])
		}
	}
}

// TestRetryOptionReadWithoutGeneratedTypes checks the premise of
// retryReader: the plugin does not link the Go package generated from
// tether.proto, so it cannot depend on gen/.
func TestRetryOptionReadWithoutGeneratedTypes(t *testing.T) {
	if _, err := protoregistry.GlobalTypes.FindExtensionByName(retryExtension); err == nil {
		t.Errorf("%s is registered: the plugin links the generated tether/v1 package", retryExtension)
	}
}

func TestUnexport(t *testing.T) {
	for in, want := range map[string]string{
		"EchoService":      "echoService",
		"HTTPAdminService": "httpAdminService",
		"HTTP":             "http",
		"HTTP2Service":     "http2Service",
		"ABService":        "abService",
		"AService":         "aService",
		"A":                "a",
		"already":          "already",
		"Élan":             "élan",
	} {
		if got := unexport(in); got != want {
			t.Errorf("unexport(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestDurationSplit(t *testing.T) {
	for _, tt := range []struct {
		d    time.Duration
		n    int64
		unit string
	}{
		{time.Hour, 1, "Hour"},
		{90 * time.Minute, 90, "Minute"},
		{90 * time.Second, 90, "Second"},
		{250 * time.Millisecond, 250, "Millisecond"},
		{1500 * time.Microsecond, 1500, "Microsecond"},
		{time.Second + time.Nanosecond, 1000000001, "Nanosecond"},
	} {
		if n, unit := duration(tt.d).split(); n != tt.n || unit != tt.unit {
			t.Errorf("split(%v) = %d %s, want %d %s", tt.d, n, unit, tt.n, tt.unit)
		}
	}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// firstDifference shows the first line where got and want differ.
func firstDifference(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := range max(len(g), len(w)) {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return "line " + strconv.Itoa(i+1) + ":\n  got:  " + gl + "\n  want: " + wl
		}
	}
	return "(only line endings differ)"
}
