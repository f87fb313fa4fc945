// Command protoc-gen-go-tether is a protoc plugin that generates tether
// handlers and clients for the services in .proto files.
//
// For each file that defines services it writes name_tether.pb.go next to
// the name.pb.go that protoc-gen-go writes, in the same Go package. For a
// service Foo in package pkg the file holds:
//
//   - FooServiceName and one FooBarProcedure constant per method;
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
// The plugin accepts the parameters every protogen plugin does (paths,
// module, M mappings); it has no options of its own. Run
// protoc-gen-go-tether --version to print its version.
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
	protogen.Options{}.Run(generate)
}
