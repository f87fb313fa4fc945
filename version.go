package tether

// SupportPackageIsVersion1 is referenced by code that protoc-gen-go-tether
// generates, as a compile-time assertion that the runtime supports it. Code
// from a newer generator that needs a newer runtime names a higher version,
// and fails to compile against an older runtime with an error that names
// this constant; upgrade github.com/tetherrpc/tether then. Do not use it in
// hand-written code.
const SupportPackageIsVersion1 = true
