// Command submit submits one task, waits for it (or watches it) within
// -timeout, and prints how it ended: the client package end to end.
//
//	go run example.com/vow/cmd/submit -kind echo -input '{"hello": "world"}'
//	go run example.com/vow/cmd/submit -kind sleep -input '{"ms": 2000}' -watch -cancel-after 500ms
//	go run example.com/vow/cmd/submit -server dns:///vow-headless.vow.svc:50051 -service-config deploy/grpc-service-config.json
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	"example.com/vow/client"
	vowv1 "example.com/vowgen/vow/v1"
	"google.golang.org/grpc"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	flags := flag.NewFlagSet("submit", flag.ContinueOnError)
	server := flags.String("server", "127.0.0.1:50051", "vowd's address, host:port")
	kind := flags.String("kind", "echo", "the task's kind")
	input := flags.String("input", "{}", "the task's input, JSON")
	timeout := flags.Duration("timeout", 10*time.Second, "how long to wait for the task")
	watch := flags.Bool("watch", false, "print every change instead of awaiting the end")
	cancelAfter := flags.Duration("cancel-after", 0, "cancel the task after this long (0: never)")
	serviceConfig := flags.String("service-config", "", "a gRPC service config to load, e.g. deploy/grpc-service-config.json")
	if err := flags.Parse(args); err != nil {
		return err
	}
	if !json.Valid([]byte(*input)) {
		return fmt.Errorf("-input is not JSON: %s", *input)
	}

	opts := []grpc.DialOption{grpc.WithInsecure()}
	if *serviceConfig != "" {
		configOpts, err := client.ServiceConfig(*serviceConfig)
		if err != nil {
			return err
		}
		opts = append(opts, configOpts...)
	}
	vow, err := client.Dial(ctx, *server, opts...)
	if err != nil {
		return err
	}
	defer vow.Close()
	// The key makes the submit safe to retry after a lost reply (Submit
	// would make one up too; a caller that may submit again keeps its own).
	task, err := vow.Submit(ctx, *kind, json.RawMessage(*input), client.WithIdempotencyKey(client.NewIdempotencyKey()))
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "submitted %s\n", task.GetId())

	waitCtx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if *cancelAfter > 0 {
		go cancelLater(waitCtx, vow, task.GetId(), *cancelAfter)
	}
	if *watch {
		task, err = watchToEnd(waitCtx, vow, task.GetId(), stdout)
	} else {
		task, _, err = vow.Await(waitCtx, task.GetId())
	}
	if err != nil {
		return err
	}
	return report(task, stdout)
}

// cancelLater cancels the task after delay, unless ctx ends first.
func cancelLater(ctx context.Context, vow *client.Client, id string, delay time.Duration) {
	timer := time.NewTimer(delay)
	defer timer.Stop()
	select {
	case <-ctx.Done():
	case <-timer.C:
		if _, err := vow.Cancel(ctx, id, "asked by -cancel-after"); err != nil {
			log.Printf("cancel: %v", err)
		}
	}
}

// watchToEnd prints every change of the task until it ends (or ctx does)
// and returns its last snapshot.
func watchToEnd(ctx context.Context, vow *client.Client, id string, stdout io.Writer) (*vowv1.Task, error) {
	watcher, err := vow.Watch(ctx, id)
	if err != nil {
		return nil, err
	}
	defer watcher.Close()
	var last *vowv1.Task
	for {
		event, err := watcher.Recv()
		if err == io.EOF {
			return last, nil
		}
		if err != nil {
			return last, err
		}
		last = event.GetTask()
		fmt.Fprintf(stdout, "revision %d: %s %.0f%% %s\n", last.GetRevision(), last.GetState(),
			last.GetProgress().GetPercent(), last.GetProgress().GetMessage())
	}
}

// report prints how the task ended, and fails unless it succeeded.
func report(task *vowv1.Task, stdout io.Writer) error {
	if !client.IsTerminal(task) {
		return fmt.Errorf("task %s is still %s", task.GetId(), task.GetState())
	}
	var output json.RawMessage
	if err := client.Output(task, &output); err != nil {
		return err // the task's own error, a gRPC status: status.Code reads it
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, output); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s %s\n", task.GetState(), compact.Bytes())
	return nil
}
