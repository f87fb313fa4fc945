// Package authz is a server interceptor for per-call authorization: a
// function decides, from the principal the server's Authenticator found at
// the handshake and the procedure, whether the call may run. A refused call
// fails with permission_denied (or the code of the function's *tether.Error)
// before its handler runs; the connection stays up.
package authz

import (
	"context"
	"errors"

	"google.golang.org/protobuf/proto"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/server"
)

// Func decides whether principal may call procedure. It returns nil to allow.
type Func func(ctx context.Context, principal any, procedure string) error

// New returns an interceptor that asks fn before every call.
func New(fn Func) server.Interceptor { return &interceptor{fn: fn} }

type interceptor struct{ fn Func }

func (a *interceptor) check(ctx context.Context) error {
	ci, ok := server.CallInfoFromContext(ctx)
	if !ok {
		return tether.Errorf(tether.CodeInternal, "authz: no call information")
	}
	err := a.fn(ctx, ci.Peer().Principal, ci.Spec().Procedure)
	if err == nil {
		return nil
	}
	var te *tether.Error
	if errors.As(err, &te) {
		return err
	}
	return tether.NewError(tether.CodePermissionDenied, err)
}

func (a *interceptor) WrapUnary(next server.UnaryFunc) server.UnaryFunc {
	return func(ctx context.Context, req proto.Message) (proto.Message, error) {
		if err := a.check(ctx); err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
}

func (a *interceptor) WrapStream(next server.StreamFunc) server.StreamFunc {
	return func(ctx context.Context, st server.Stream) error {
		if err := a.check(ctx); err != nil {
			return err
		}
		return next(ctx, st)
	}
}
