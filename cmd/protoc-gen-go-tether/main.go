// Command protoc-gen-go-tether is a protoc plugin that generates tether
// handlers and clients for the services in .proto files.
//
// For each file that defines services it writes name_tether.pb.go next to
// the name.pb.go that protoc-gen-go writes, in the same Go package (or, with
// the package_suffix option, in a package of its own beside it). For a
// service Foo with a method Bar the file holds:
//
//   - FooName and one FooBarProcedure constant per method;
//   - FooHandler, the interface a server implements, with
//     UnimplementedFooHandler to embed in implementations and
//     RegisterFooHandler to serve one on a *server.Server;
//   - FooClient and NewFooClient, which calls the service over a
//     *client.Client.
//
// Each method's idempotency comes from the standard idempotency_level
// option, and its retry and dead-letter policy from the (tether.v1.retry)
// option declared in tether/v1/tether.proto.
//
// # Use with buf
//
// In buf.gen.yaml, next to protoc-gen-go:
//
//	version: v2
//	plugins:
//	  - local: protoc-gen-go
//	    out: gen
//	    opt: paths=source_relative
//	  - local: protoc-gen-go-tether
//	    out: gen
//	    opt: paths=source_relative
//
// Inside this repository the plugin runs from source (local: ["go", "run",
// "./cmd/protoc-gen-go-tether"]); run ./scripts/generate.sh.
//
// # Use with protoc
//
// Install the plugin so that protoc finds it on $PATH:
//
//	go install github.com/tetherrpc/tether/cmd/protoc-gen-go-tether@latest
//
// and run protoc with both Go plugins:
//
//	protoc --go_out=. --go_opt=paths=source_relative \
//	    --go-tether_out=. --go-tether_opt=paths=source_relative \
//	    example/echo/v1/echo.proto
//
// # Options
//
// The plugin accepts the parameters every protogen plugin does (paths,
// module, annotate_code, M mappings) and one of its own:
//
//   - package_suffix=<suffix>: write each file's tether code into its own Go
//     package, the messages' package name followed by suffix, in a
//     directory of that name beside the .pb.go file (as connect-go's
//     package_suffix). With package_suffix=tether, foo/v1/foo.proto in
//     package foov1 gets foo/v1/foov1tether/foo_tether.pb.go in package
//     foov1tether. Use it to generate grpc-go and tether code for the same
//     .proto files, or when the messages' names leave no room for tether's.
//
// Any other option fails generation, so that a misspelt one is not ignored.
//
// # Generated names
//
// Names in generated code never clash with the messages of the same Go
// package or with each other: a name that the rules above would give twice,
// or that protoc-gen-go already declares, gets underscores appended until it
// is free (the first service in the file keeps the plain name), as
// protoc-gen-go does for oneof wrappers, and its doc comment says why.
// Parameters are named so that they hide no imported package. Generate all
// the .proto files of one Go package in the same protoc or buf run, so that
// the plugin sees all of its names.
//
// Every generated file asserts at compile time that the tether runtime it is
// built with is recent enough (const _ = tether.SupportPackageIsVersion1).
//
// Run protoc-gen-go-tether --version to print its version.
package main

import (
	"flag"
	"fmt"
	"os"

	"google.golang.org/protobuf/compiler/protogen"
)

// version is the plugin's version, printed by --version and written into
// the header of every generated file.
const version = "v0.1.0-dev"

func main() {
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), `Usage: protoc-gen-go-tether [--version]

protoc-gen-go-tether is a protoc plugin: protoc or buf runs it and talks to it
on stdin and stdout. Use it as
	protoc --go-tether_out=. --go-tether_opt=paths=source_relative file.proto
or as a local plugin in buf.gen.yaml.

Flags:
`)
		flag.PrintDefaults()
	}
	flag.Parse()
	if *showVersion {
		fmt.Println("protoc-gen-go-tether", version)
		return
	}
	if flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	opts := new(options)
	protogen.Options{ParamFunc: opts.paramFunc()}.Run(func(gen *protogen.Plugin) error {
		return generateWith(gen, opts)
	})
}
