package server_test

import (
	"testing"

	"github.com/tetherrpc/tether"
	echov1 "github.com/tetherrpc/tether/gen/example/echo/v1"
	"github.com/tetherrpc/tether/server"
)

// TestCheckpointArguments: Checkpoint needs a cursor of 1 to
// MaxResumeCursor bytes (internal otherwise), and does nothing on a stream
// without cursors.
func TestCheckpointArguments(t *testing.T) {
	cs := &server.ClientStream[echov1.CollectRequest]{}
	bs := &server.BidiStream[echov1.ChatRequest, echov1.ChatResponse]{}
	for _, checkpoint := range []func([]byte) error{cs.Checkpoint, bs.Checkpoint} {
		for _, c := range [][]byte{nil, {}, make([]byte, server.MaxResumeCursor+1)} {
			if err := checkpoint(c); tether.CodeOf(err) != tether.CodeInternal {
				t.Fatalf("Checkpoint of %d bytes: %v, want internal", len(c), err)
			}
		}
		if err := checkpoint([]byte{1}); err != nil {
			t.Fatalf("Checkpoint on a stream without cursors: %v", err)
		}
	}
	if err := bs.SendWithCursor(&echov1.ChatResponse{}, make([]byte, server.MaxResumeCursor+1)); tether.CodeOf(err) != tether.CodeInternal {
		t.Fatalf("SendWithCursor with a cursor over MaxResumeCursor: %v, want internal", err)
	}
}
