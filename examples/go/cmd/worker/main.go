// Command worker runs the remote kind "greet" for vowd until SIGTERM or
// SIGINT; then it stops polling, lets running attempts finish for
// -drain-timeout, and hands the rest back to the queue.
//
//	vowd --remote-kind greet &
//	go run example.com/vow/cmd/worker -server 127.0.0.1:50051
//	go run example.com/vow/cmd/submit -kind greet -input '{"name": "gopher", "steps": 5}' -watch
package main

import (
	"context"
	"flag"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"example.com/vow/worker"
	"google.golang.org/grpc"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		log.Fatal(err)
	}
}

func run(args []string) error {
	flags := flag.NewFlagSet("worker", flag.ContinueOnError)
	server := flags.String("server", "127.0.0.1:50051", "vowd's address, host:port")
	concurrency := flags.Int("concurrency", 4, "attempts run at once")
	drainTimeout := flags.Duration("drain-timeout", 30*time.Second, "how long running attempts may finish after SIGTERM")
	leaseDuration := flags.Duration("lease-duration", 0, "lease asked for, renewed (with progress) at a third of it; 0: the server's")
	if err := flags.Parse(args); err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	conn, err := grpc.DialContext(ctx, *server, grpc.WithInsecure())
	if err != nil {
		return err
	}
	defer conn.Close()

	w := worker.New(conn,
		worker.WithConcurrency(*concurrency),
		worker.WithDrainTimeout(*drainTimeout),
		worker.WithLeaseDuration(*leaseDuration))
	w.Handle("greet", greet)
	log.Printf("worker: running greet for %s", *server)
	if err := w.Run(ctx); err != nil {
		return err
	}
	log.Printf("worker: stopped")
	return nil
}
