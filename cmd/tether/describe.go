package main

// tether list and tether describe: a server's services and methods, and
// schemas in .proto syntax, from reflection or local descriptors.

import (
	"flag"
	"fmt"
	"io"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
)

func runList(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("list", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf connFlags
	cf.register(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: tether list [flags] URL [SERVICE]\n\nLists the services of the server at URL (ws:// or wss://), or the methods of\nSERVICE with their kind and idempotency, from the server's reflection service\nor --descriptor-set / --proto.\n\n")
		fs.PrintDefaults()
	}
	if err := parseInterspersed(fs, args); err != nil {
		return exitUsage
	}
	if fs.NArg() < 1 || fs.NArg() > 2 {
		fs.Usage()
		return exitUsage
	}
	return withSchema(&cf, fs.Arg(0), stderr, func(_ *client.Client, sc schema) error {
		ctx, cancel := cf.context()
		defer cancel()
		if fs.NArg() == 1 {
			svcs, err := sc.services(ctx)
			if err != nil {
				return err
			}
			for _, s := range svcs {
				fmt.Fprintln(stdout, s)
			}
			return nil
		}
		d, err := sc.find(ctx, fs.Arg(1))
		if err != nil {
			return err
		}
		sd, ok := d.(protoreflect.ServiceDescriptor)
		if !ok {
			return tether.Errorf(tether.CodeInvalidArgument, "%s is not a service", d.FullName())
		}
		for i := range sd.Methods().Len() {
			m := sd.Methods().Get(i)
			fmt.Fprintf(stdout, "%s\t%s\t%s\n", m.FullName(), methodKind(m), idempotencyOf(m))
		}
		return nil
	})
}

func runDescribe(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("describe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf connFlags
	cf.register(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: tether describe [flags] URL SYMBOL\n\nPrints the schema of SYMBOL (a service, method, message or enum, fully\nqualified, e.g. example.echo.v1.EchoService) in .proto syntax.\n\n")
		fs.PrintDefaults()
	}
	if err := parseInterspersed(fs, args); err != nil {
		return exitUsage
	}
	if fs.NArg() != 2 {
		fs.Usage()
		return exitUsage
	}
	return withSchema(&cf, fs.Arg(0), stderr, func(_ *client.Client, sc schema) error {
		ctx, cancel := cf.context()
		defer cancel()
		name := strings.Replace(fs.Arg(1), "/", ".", 1)
		d, err := sc.find(ctx, name)
		if err != nil {
			return err
		}
		p := &printer{w: stdout, pkg: d.ParentFile().Package()}
		switch d := d.(type) {
		case protoreflect.ServiceDescriptor:
			fmt.Fprintf(stdout, "%s is a service:\n", d.FullName())
			p.service(d)
		case protoreflect.MethodDescriptor:
			fmt.Fprintf(stdout, "%s is a %s method (%s):\n", d.FullName(), methodKind(d), idempotencyOf(d))
			p.method(d)
		case protoreflect.MessageDescriptor:
			fmt.Fprintf(stdout, "%s is a message:\n", d.FullName())
			p.message(d)
		case protoreflect.EnumDescriptor:
			fmt.Fprintf(stdout, "%s is an enum:\n", d.FullName())
			p.enum(d)
		case protoreflect.FieldDescriptor:
			fmt.Fprintf(stdout, "%s is a field:\n", d.FullName())
			p.field(d)
		default:
			fmt.Fprintf(stdout, "%s is declared in %s\n", d.FullName(), d.ParentFile().Path())
		}
		return nil
	})
}

// withSchema dials url, builds the schema source and runs fn; it prints
// fn's error and returns the exit code.
func withSchema(cf *connFlags, url string, stderr io.Writer, fn func(*client.Client, schema) error) int {
	c, err := cf.dial(url)
	if err != nil {
		fmt.Fprintln(stderr, "tether:", err)
		return exitUsage
	}
	defer c.Close()
	sc, err := cf.newSchema(c)
	if err != nil {
		fmt.Fprintln(stderr, "tether:", err)
		return exitUsage
	}
	if err := fn(c, sc); err != nil {
		printError(stderr, err, sc)
		return exitCode(err)
	}
	return exitOK
}

// methodKind names a method's kind of call.
func methodKind(m protoreflect.MethodDescriptor) string {
	switch {
	case m.IsStreamingClient() && m.IsStreamingServer():
		return "bidi-streaming"
	case m.IsStreamingClient():
		return "client-streaming"
	case m.IsStreamingServer():
		return "server-streaming"
	}
	return "unary"
}

// idempotencyOf is the method's declared idempotency level, as the CLI and
// the retry rules name it.
func idempotencyOf(m protoreflect.MethodDescriptor) string {
	opts, _ := m.Options().(*descriptorpb.MethodOptions)
	switch opts.GetIdempotencyLevel() {
	case descriptorpb.MethodOptions_NO_SIDE_EFFECTS:
		return "no side effects"
	case descriptorpb.MethodOptions_IDEMPOTENT:
		return "idempotent"
	}
	return "not idempotent"
}

// printer writes descriptors in .proto syntax. Names of the package being
// described are written relative to it, others fully qualified.
type printer struct {
	w      io.Writer
	pkg    protoreflect.FullName
	indent int
}

func (p *printer) line(format string, args ...any) {
	fmt.Fprintf(p.w, "%s%s\n", strings.Repeat("  ", p.indent), fmt.Sprintf(format, args...))
}

func (p *printer) name(d protoreflect.Descriptor) string {
	full := string(d.FullName())
	if p.pkg != "" && strings.HasPrefix(full, string(p.pkg)+".") {
		return full[len(p.pkg)+1:]
	}
	return full
}

func (p *printer) service(s protoreflect.ServiceDescriptor) {
	p.line("service %s {", s.Name())
	p.indent++
	for i := range s.Methods().Len() {
		p.method(s.Methods().Get(i))
	}
	p.indent--
	p.line("}")
}

func (p *printer) method(m protoreflect.MethodDescriptor) {
	stream := func(b bool) string {
		if b {
			return "stream "
		}
		return ""
	}
	sig := fmt.Sprintf("rpc %s(%s%s) returns (%s%s)", m.Name(), stream(m.IsStreamingClient()), p.name(m.Input()), stream(m.IsStreamingServer()), p.name(m.Output()))
	opts, _ := m.Options().(*descriptorpb.MethodOptions)
	if lvl := opts.GetIdempotencyLevel(); lvl != descriptorpb.MethodOptions_IDEMPOTENCY_UNKNOWN {
		p.line("%s {", sig)
		p.line("  option idempotency_level = %s;", lvl)
		p.line("}")
		return
	}
	p.line("%s;", sig)
}

func (p *printer) message(m protoreflect.MessageDescriptor) {
	p.line("message %s {", m.Name())
	p.indent++
	for i := range m.Messages().Len() {
		if n := m.Messages().Get(i); !n.IsMapEntry() {
			p.message(n)
		}
	}
	for i := range m.Enums().Len() {
		p.enum(m.Enums().Get(i))
	}
	printed := map[protoreflect.OneofDescriptor]bool{}
	for i := range m.Fields().Len() {
		f := m.Fields().Get(i)
		o := f.ContainingOneof()
		if o == nil || o.IsSynthetic() {
			p.field(f)
			continue
		}
		if printed[o] {
			continue
		}
		printed[o] = true
		p.line("oneof %s {", o.Name())
		p.indent++
		for j := range o.Fields().Len() {
			p.field(o.Fields().Get(j))
		}
		p.indent--
		p.line("}")
	}
	for i := range m.ReservedRanges().Len() {
		r := m.ReservedRanges().Get(i)
		if r[1]-r[0] == 1 {
			p.line("reserved %d;", r[0])
		} else {
			p.line("reserved %d to %d;", r[0], r[1]-1)
		}
	}
	p.indent--
	p.line("}")
}

func (p *printer) field(f protoreflect.FieldDescriptor) {
	label := ""
	switch {
	case f.IsMap():
	case f.IsList():
		label = "repeated "
	case f.HasOptionalKeyword():
		label = "optional "
	case f.Cardinality() == protoreflect.Required:
		label = "required "
	}
	p.line("%s%s %s = %d;", label, p.fieldType(f), f.Name(), f.Number())
}

func (p *printer) fieldType(f protoreflect.FieldDescriptor) string {
	if f.IsMap() {
		return fmt.Sprintf("map<%s, %s>", p.fieldType(f.MapKey()), p.fieldType(f.MapValue()))
	}
	switch f.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return p.name(f.Message())
	case protoreflect.EnumKind:
		return p.name(f.Enum())
	}
	return f.Kind().String()
}

func (p *printer) enum(e protoreflect.EnumDescriptor) {
	p.line("enum %s {", e.Name())
	p.indent++
	for i := range e.Values().Len() {
		v := e.Values().Get(i)
		p.line("%s = %d;", v.Name(), v.Number())
	}
	p.indent--
	p.line("}")
}

// parseInterspersed parses flags that may come before or after the
// positional arguments (tether call URL METHOD -d '{}').
func parseInterspersed(fs *flag.FlagSet, args []string) error {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return err
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		if args[0] == "--" {
			pos = append(pos, args[1:]...)
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	return fs.Parse(append([]string{"--"}, pos...))
}
