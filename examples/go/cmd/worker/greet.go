package main

import (
	"context"
	"fmt"
	"time"

	"example.com/vow/worker"
	"google.golang.org/grpc/codes"
)

// stepDuration is how long one step of greet takes.
const stepDuration = 100 * time.Millisecond

type greetInput struct {
	Name  string `json:"name"`
	Steps int    `json:"steps"`
}

type greetOutput struct {
	Greeting string `json:"greeting"`
}

// greet turns {"name": "gopher", "steps": 3} into {"greeting": "hello,
// gopher"} after that many steps, reporting progress after each and
// stopping as soon as its context is done (cancelled, past the attempt
// deadline, lease lost, or the worker giving up on draining).
func greet(ctx context.Context, task *worker.Task) (any, error) {
	var input greetInput
	if err := task.Decode(&input); err != nil {
		return nil, worker.Errorf(codes.InvalidArgument, "input: %w", err).WithReason("BAD_INPUT")
	}
	if input.Name == "" {
		return nil, worker.Errorf(codes.InvalidArgument, "name is empty").WithReason("NO_NAME").WithMetadata("field", "name")
	}

	ticker := time.NewTicker(stepDuration)
	defer ticker.Stop()
	for step := 1; step <= input.Steps; step++ {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-ticker.C:
		}
		task.ReportProgress(float32(100*step)/float32(input.Steps), fmt.Sprintf("step %d of %d", step, input.Steps))
	}
	return greetOutput{Greeting: "hello, " + input.Name}, nil
}
