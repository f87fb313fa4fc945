// Package routeguide is the route_guide-style service of docs/MIGRATING.md,
// in the middle of its move from grpc-go to tether: one implementation of the
// service, served by grpc-go and tether at once.
//
// Guide holds the logic. A unary method has the same signature under both
// frameworks, so Guide's GetFeature serves both as it is; a streaming method
// gets a stream of a different type from each, so Guide's streaming methods
// take the small interfaces below, which both frameworks' streams satisfy,
// and two thin adapters pass the streams on.
package routeguide

import (
	"context"
	"errors"
	"io"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	routeguidev1 "github.com/tetherrpc/tether/testdata/corpus/gen/routeguide/v1"
	"github.com/tetherrpc/tether/testdata/corpus/gen/routeguide/v1/routeguidev1tether"

	"github.com/tetherrpc/tether/server"
)

// Guide is the route guide: a fixed set of features and the notes left at
// each point.
type Guide struct {
	Features []*routeguidev1.Feature

	mu    sync.Mutex
	notes map[string][]*routeguidev1.RouteNote
}

// GetFeature returns the feature at p, or an unnamed feature.
func (g *Guide) GetFeature(_ context.Context, p *routeguidev1.Point) (*routeguidev1.Feature, error) {
	for _, f := range g.Features {
		if proto.Equal(f.GetLocation(), p) {
			return f, nil
		}
	}
	return &routeguidev1.Feature{Location: p}, nil
}

// sender is what both frameworks' server-side streams offer to send.
type sender[T any] interface{ Send(*T) error }

// ListFeatures sends the features inside r.
func (g *Guide) ListFeatures(r *routeguidev1.Rectangle, stream sender[routeguidev1.Feature]) error {
	for _, f := range g.Features {
		if inRange(f.GetLocation(), r) {
			if err := stream.Send(f); err != nil {
				return err
			}
		}
	}
	return nil
}

// RecordRoute counts the points received until the end of the stream.
// receive is the stream's receive method: Recv for grpc-go, Receive for
// tether; both return io.EOF at the end.
func (g *Guide) RecordRoute(receive func() (*routeguidev1.Point, error)) (*routeguidev1.RouteSummary, error) {
	summary := new(routeguidev1.RouteSummary)
	for {
		p, err := receive()
		if errors.Is(err, io.EOF) {
			return summary, nil
		}
		if err != nil {
			return nil, err
		}
		summary.PointCount++
		for _, f := range g.Features {
			if proto.Equal(f.GetLocation(), p) {
				summary.FeatureCount++
			}
		}
	}
}

// RouteChat answers each note with the notes left before at its point.
func (g *Guide) RouteChat(receive func() (*routeguidev1.RouteNote, error), stream sender[routeguidev1.RouteNote]) error {
	for {
		in, err := receive()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		key := in.GetLocation().String()
		g.mu.Lock()
		if g.notes == nil {
			g.notes = make(map[string][]*routeguidev1.RouteNote)
		}
		earlier := append([]*routeguidev1.RouteNote(nil), g.notes[key]...)
		g.notes[key] = append(g.notes[key], in)
		g.mu.Unlock()
		for _, note := range earlier {
			if err := stream.Send(note); err != nil {
				return err
			}
		}
	}
}

func inRange(p *routeguidev1.Point, r *routeguidev1.Rectangle) bool {
	left, right := min(r.GetLo().GetLongitude(), r.GetHi().GetLongitude()), max(r.GetLo().GetLongitude(), r.GetHi().GetLongitude())
	bottom, top := min(r.GetLo().GetLatitude(), r.GetHi().GetLatitude()), max(r.GetLo().GetLatitude(), r.GetHi().GetLatitude())
	return p.GetLongitude() >= left && p.GetLongitude() <= right && p.GetLatitude() >= bottom && p.GetLatitude() <= top
}

// GRPC serves g with grpc-go: the generated RouteGuideServer.
type GRPC struct {
	routeguidev1.UnimplementedRouteGuideServer
	*Guide
}

// GetFeature is Guide's: the signatures match.
func (s GRPC) GetFeature(ctx context.Context, p *routeguidev1.Point) (*routeguidev1.Feature, error) {
	return s.Guide.GetFeature(ctx, p)
}

// ListFeatures passes grpc-go's stream on.
func (s GRPC) ListFeatures(r *routeguidev1.Rectangle, stream grpc.ServerStreamingServer[routeguidev1.Feature]) error {
	return s.Guide.ListFeatures(r, stream)
}

// RecordRoute passes grpc-go's stream on.
func (s GRPC) RecordRoute(stream grpc.ClientStreamingServer[routeguidev1.Point, routeguidev1.RouteSummary]) error {
	summary, err := s.Guide.RecordRoute(stream.Recv)
	if err != nil {
		return err
	}
	return stream.SendAndClose(summary)
}

// RouteChat passes grpc-go's stream on.
func (s GRPC) RouteChat(stream grpc.BidiStreamingServer[routeguidev1.RouteNote, routeguidev1.RouteNote]) error {
	return s.Guide.RouteChat(stream.Recv, stream)
}

// Tether serves g with tether: the generated RouteGuideHandler.
type Tether struct {
	routeguidev1tether.UnimplementedRouteGuideHandler
	*Guide
}

// GetFeature is Guide's: the signatures match.
func (s Tether) GetFeature(ctx context.Context, p *routeguidev1.Point) (*routeguidev1.Feature, error) {
	return s.Guide.GetFeature(ctx, p)
}

// ListFeatures passes tether's stream on.
func (s Tether) ListFeatures(_ context.Context, r *routeguidev1.Rectangle, stream *server.ServerStream[routeguidev1.Feature]) error {
	return s.Guide.ListFeatures(r, stream)
}

// RecordRoute passes tether's stream on.
func (s Tether) RecordRoute(_ context.Context, stream *server.ClientStream[routeguidev1.Point]) (*routeguidev1.RouteSummary, error) {
	return s.Guide.RecordRoute(stream.Receive)
}

// RouteChat passes tether's stream on.
func (s Tether) RouteChat(_ context.Context, stream *server.BidiStream[routeguidev1.RouteNote, routeguidev1.RouteNote]) error {
	return s.Guide.RouteChat(stream.Receive, stream)
}
