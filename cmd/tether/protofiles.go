package main

import (
	"errors"

	"github.com/tetherrpc/tether"
)

// compileProtos compiles .proto files for --proto.
func compileProtos(importPaths, files []string) (schema, error) {
	_ = importPaths
	_ = files
	return nil, tether.NewError(tether.CodeUnimplemented, errors.New("--proto is not built yet"))
}
