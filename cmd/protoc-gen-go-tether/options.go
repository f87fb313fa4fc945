package main

import (
	"flag"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	"google.golang.org/protobuf/compiler/protogen"
)

// options are the plugin's own parameters, given as
// --go-tether_opt=name=value to protoc or in opt: of buf.gen.yaml, next to
// those protogen handles (paths, module, annotate_code, M mappings).
type options struct {
	// packageSuffix, when not empty, writes a file's tether code into its
	// own Go package beside the messages' package pkg: package pkg+suffix,
	// in the directory of that name next to the .pb.go file, as connect-go's
	// package_suffix does. Then tether's names cannot collide with the
	// messages' or with grpc-go's, so that both can be generated for the same
	// .proto files.
	packageSuffix string
}

// flagSet returns the parameters as a flag set whose Set parses one. Set
// fails on a parameter the plugin does not know, so that a misspelt option
// fails generation instead of being ignored.
func (o *options) flagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("protoc-gen-go-tether", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Func("package_suffix", "write tether code into package <go package>+suffix, in a directory of that name", func(s string) error {
		if s != "" && !isGoIdentifierTail(s) {
			return fmt.Errorf("%q is not usable at the end of a Go package name", s)
		}
		o.packageSuffix = s
		return nil
	})
	return fs
}

// paramFunc returns the protogen.Options.ParamFunc for o: it sets one
// parameter, and names the known ones when it does not know param.
func (o *options) paramFunc() func(name, value string) error {
	fs := o.flagSet()
	return func(name, value string) error {
		if fs.Lookup(name) == nil {
			var known []string
			fs.VisitAll(func(f *flag.Flag) { known = append(known, f.Name) })
			known = append(known, "paths", "module", "annotate_code", "M<file>=<package>")
			sort.Strings(known)
			return fmt.Errorf("unknown option %q (the options are %s)", name, strings.Join(known, ", "))
		}
		if err := fs.Set(name, value); err != nil {
			return fmt.Errorf("option %s: %v", name, err)
		}
		return nil
	}
}

// isGoIdentifierTail reports whether s can follow a Go identifier:
// letters, digits and underscores.
func isGoIdentifierTail(s string) bool {
	for _, r := range s {
		if !(r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

// outputPackage is where the tether code of one .proto file goes.
type outputPackage struct {
	importPath protogen.GoImportPath
	name       protogen.GoPackageName
	filename   string // the generated file's name
	// withMessages is true when the messages' code is in the same package.
	withMessages bool
}

// outputFor returns where file's tether code goes under o.
func (o *options) outputFor(file *protogen.File) outputPackage {
	if o.packageSuffix == "" {
		return outputPackage{
			importPath:   file.GoImportPath,
			name:         file.GoPackageName,
			filename:     file.GeneratedFilenamePrefix + "_tether.pb.go",
			withMessages: true,
		}
	}
	// As connect-go: foo/v1/foo.proto, Go package foov1, suffix tether ->
	// foo/v1/foov1tether/foo_tether.pb.go in package foov1tether.
	name := file.GoPackageName + protogen.GoPackageName(o.packageSuffix)
	prefix := file.GeneratedFilenamePrefix
	return outputPackage{
		importPath: protogen.GoImportPath(path.Join(string(file.GoImportPath), string(name))),
		name:       name,
		filename:   path.Join(path.Dir(prefix), string(name), path.Base(prefix)) + "_tether.pb.go",
	}
}
