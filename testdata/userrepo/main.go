// Command greet serves the README's GreetService from generated code with
// Server.Serve on 127.0.0.1, calls it once, drains and exits: run.sh builds
// and runs it in a user repository of its own.
package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/client"
	"github.com/tetherrpc/tether/server"

	greetv1 "example.com/greet/gen/greet/v1"
)

type greeter struct {
	greetv1.UnimplementedGreetServiceHandler
}

func (greeter) Greet(ctx context.Context, req *greetv1.GreetRequest) (*greetv1.GreetResponse, error) {
	if req.GetName() == "" {
		return nil, tether.Errorf(tether.CodeInvalidArgument, "name is required")
	}
	return &greetv1.GreetResponse{Greeting: "Hello, " + req.GetName() + "!"}, nil
}

func main() {
	srv := server.New()
	greetv1.RegisterGreetServiceHandler(srv, greeter{})
	mux := http.NewServeMux()
	mux.Handle("/rpc", srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln, server.WithHTTPHandler(mux)) }()

	c, err := client.New("ws://" + ln.Addr().String() + "/rpc")
	if err != nil {
		log.Fatal(err)
	}
	callCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := greetv1.NewGreetServiceClient(c).Greet(callCtx, &greetv1.GreetRequest{Name: "Ada"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.GetGreeting())
	_ = c.Close()
	stop()
	if err := <-served; err != nil {
		log.Fatal(err)
	}
}
