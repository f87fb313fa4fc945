package main

import (
	"context"
	"fmt"

	"github.com/bufbuild/protocompile"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
)

// compileProtos compiles .proto files in-process (--proto) with
// github.com/bufbuild/protocompile. Files and their imports are found in
// importPaths (default: the working directory); imports found in none of
// them come from the descriptors linked into the tool: the well-known types
// and tether/v1/tether.proto (the retry options).
func compileProtos(importPaths, files []string) (schema, error) {
	src := &protocompile.SourceResolver{ImportPaths: importPaths}
	linked := protocompile.ResolverFunc(func(path string) (protocompile.SearchResult, error) {
		res, err := src.FindFileByPath(path)
		if err == nil {
			return res, nil
		}
		if fd, gerr := protoregistry.GlobalFiles.FindFileByPath(path); gerr == nil {
			return protocompile.SearchResult{Desc: fd}, nil
		}
		return res, err
	})
	c := protocompile.Compiler{Resolver: protocompile.WithStandardImports(linked)}
	compiled, err := c.Compile(context.Background(), files...)
	if err != nil {
		return nil, fmt.Errorf("--proto: %v", err)
	}
	set := &descriptorpb.FileDescriptorSet{}
	seen := map[string]bool{}
	var add func(fd protoreflect.FileDescriptor)
	add = func(fd protoreflect.FileDescriptor) {
		if seen[fd.Path()] {
			return
		}
		seen[fd.Path()] = true
		for i := range fd.Imports().Len() {
			add(fd.Imports().Get(i).FileDescriptor)
		}
		set.File = append(set.File, protodesc.ToFileDescriptorProto(fd))
	}
	for _, f := range compiled {
		add(f)
	}
	return newStaticSchema(set)
}
