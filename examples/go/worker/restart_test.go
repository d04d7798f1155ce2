package worker_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"example.com/vow/client"
	"example.com/vow/internal/vowdtest"
	"example.com/vow/worker"
	vowv1 "example.com/vowgen/vow/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// A worker connected straight to one vowd rides through its restart on the
// same address and data directory: the attempt running across it renews
// its lease and completes at the successor, and the worker polls there.
func TestWorkerRidesThroughARestart(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	first := vowdtest.StartConfig(t, vowdtest.Config{DataDir: dataDir, RemoteKinds: []string{kind}})
	conn, err := grpc.Dial(first.Addr, grpc.WithInsecure(), grpc.WithConnectParams(grpc.ConnectParams{
		// grpc-go's default waits 1 s, then longer, before reconnecting.
		Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 250 * time.Millisecond},
		MinConnectTimeout: time.Second,
	}))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	vow := client.New(conn)

	started := make(chan struct{}, 1)
	release := make(chan struct{})
	w := worker.New(conn, worker.WithID("go-restart"), worker.WithLogf(t.Logf))
	w.Handle(kind, func(ctx context.Context, task *worker.Task) (any, error) {
		if task.Labels["hold"] == "yes" {
			started <- struct{}{}
			select {
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return greet(ctx, task)
	})
	ctx, stop := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- w.Run(ctx) }()
	defer func() {
		stop()
		if err := <-stopped; err != nil {
			t.Errorf("worker: %v", err)
		}
	}()

	held, err := vow.Submit(ctx, kind, map[string]string{"name": "held"},
		client.WithLabels(map[string]string{"hold": "yes"}), client.WithIdempotencyKey(client.NewIdempotencyKey()))
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	select {
	case <-started:
	case <-time.After(testTimeout):
		t.Fatalf("the handler did not start within %v", testTimeout)
	}

	first.Terminate(t)
	vowdtest.StartConfig(t, vowdtest.Config{DataDir: dataDir, Listen: first.Addr, RemoteKinds: []string{kind}})
	close(release)

	task := await(t, vow, held.GetId())
	if task.GetState() != vowv1.TaskState_TASK_STATE_SUCCEEDED || task.GetAttempt() != 1 {
		t.Fatalf("state %v after attempt %d (error %v), want SUCCEEDED at the first", task.GetState(), task.GetAttempt(), task.GetError())
	}
	after, err := vow.Submit(ctx, kind, map[string]string{"name": "after"}, client.WithIdempotencyKey(client.NewIdempotencyKey()))
	if err != nil {
		t.Fatalf("submit at the successor: %v", err)
	}
	if task := await(t, vow, after.GetId()); task.GetState() != vowv1.TaskState_TASK_STATE_SUCCEEDED {
		t.Fatalf("the task submitted after the restart is %v, want SUCCEEDED", task.GetState())
	}
}
