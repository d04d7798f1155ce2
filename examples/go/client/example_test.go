package client_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"example.com/vow/client"
)

// Submit a task, then wait for it with a deadline of your own: Await
// answers shortly before it, with done == false if the task still runs.
func Example() {
	ctx := context.Background()
	vow, err := client.Dial(ctx, "127.0.0.1:50051")
	if err != nil {
		log.Fatal(err)
	}
	defer vow.Close()

	task, err := vow.Submit(ctx, "echo", map[string]string{"hello": "world"})
	if err != nil {
		log.Fatal(err)
	}
	waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	task, done, err := vow.Await(waitCtx, task.GetId())
	if err != nil {
		log.Fatal(err)
	}
	var output map[string]string
	if err := client.Output(task, &output); done && err != nil {
		log.Fatal(err) // the task failed or was cancelled: err is its gRPC status
	}
	fmt.Println(done, output)
}

// Run binds the task to the call: the context's deadline is the task's
// deadline, and cancelling the context cancels the task.
func ExampleClient_Run() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	vow, err := client.Dial(ctx, "127.0.0.1:50051")
	if err != nil {
		log.Fatal(err)
	}
	defer vow.Close()

	task, err := vow.Run(ctx, "sleep", map[string]int{"ms": 50})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(task.GetState(), client.TaskError(task))
}
