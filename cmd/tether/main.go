// Command tether is tether's command-line tool.
//
// Usage:
//
//	tether <command> [arguments]
//
// The commands are:
//
//	list     list a server's services, or a service's methods
//	describe print a service, method or message in .proto syntax
//	call     call any method with JSON requests
//	load     load-test any method: calls/s, latencies, status codes
//	dlq      inspect, replay and purge the dead-letter queue
//	demo     run the example services and a client on loopback
//
// Run "tether <command> -h" for a command's usage.
package main

import (
	"fmt"
	"io"
	"os"
)

// Exit codes.
const (
	exitOK      = 0 // success
	exitFailure = 1 // the command ran and failed
	exitUsage   = 2 // bad command line
)

// command is one subcommand of tether. run gets the arguments after the
// command's name and returns the process's exit code.
type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

// commands lists the subcommands, in the order usage shows them. Add new
// ones here; each lives in its own file (cmd/tether/<name>.go).
var commands = []command{
	{"list", "list a server's services, or a service's methods", runList},
	{"describe", "print a service, method or message in .proto syntax", runDescribe},
	{"call", "call any method with JSON requests", runCall},
	{"load", "load-test any method: calls/s, latencies, status codes", runLoad},
	{"dlq", "inspect, replay and purge the dead-letter queue", runDLQ},
	{"demo", "run the example services and a client on loopback", runDemo},
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches args (without the program name) to a command and returns
// the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		usage(stdout)
		return exitOK
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "tether: unknown command %q\n", args[0])
	usage(stderr)
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "Usage:\n\n\ttether <command> [arguments]\n\nThe commands are:\n\n")
	for _, c := range commands {
		fmt.Fprintf(w, "\t%-9s%s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nRun \"tether <command> -h\" for a command's usage.\n")
}
