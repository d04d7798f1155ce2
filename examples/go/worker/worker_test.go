package worker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"example.com/vow/client"
	"example.com/vow/internal/vowdtest"
	"example.com/vow/worker"
	vowv1 "example.com/vowgen/vow/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// testTimeout bounds every wait on a condition: reached only when
// something is broken, never in a passing run.
const testTimeout = 10 * time.Second

// heartbeatInterval is how often the worker renews vowdtest's leases.
const heartbeatInterval = vowdtest.LeaseDuration / 3

const kind = "greet"

// greet is the handler of most tests: {"name": N} -> {"greeting": "hello, N"}.
func greet(ctx context.Context, task *worker.Task) (any, error) {
	var input struct{ Name string }
	if err := task.Decode(&input); err != nil || input.Name == "" {
		return nil, worker.Errorf(codes.InvalidArgument, "want {\"name\": ...}").WithReason("NO_NAME").WithMetadata("field", "name")
	}
	task.ReportProgress(50, "greeting")
	return map[string]string{"greeting": "hello, " + input.Name}, nil
}

// setup starts vowd with kind remote and a client of it.
func setup(t *testing.T) (*vowdtest.Server, *client.Client) {
	t.Helper()
	server := vowdtest.Start(t, []string{kind})
	return server, client.New(server.Conn)
}

// runWorker runs a worker of kind until the test ends (or stop is called),
// and fails the test if it does not stop in time.
func runWorker(t *testing.T, server *vowdtest.Server, handler worker.HandlerFunc, opts ...worker.Option) (stop func()) {
	t.Helper()
	opts = append([]worker.Option{worker.WithID("go-test"), worker.WithLogf(t.Logf)}, opts...)
	w := worker.New(server.Conn, opts...)
	w.Handle(kind, handler)
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- w.Run(ctx) }()
	var done bool
	stop = func() {
		if done {
			return
		}
		done = true
		cancel()
		select {
		case err := <-stopped:
			if err != nil {
				t.Errorf("worker: %v", err)
			}
		case <-time.After(testTimeout):
			t.Errorf("worker did not stop within %v", testTimeout)
		}
	}
	t.Cleanup(stop)
	return stop
}

// await waits for a task to finish, within testTimeout.
func await(t *testing.T, vow *client.Client, id string) *vowv1.Task {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	task, done, err := vow.Await(ctx, id)
	if err != nil || !done {
		t.Fatalf("await %s: done=%v err=%v (state %v)", id, done, err, task.GetState())
	}
	return task
}

func submit(t *testing.T, vow *client.Client, input any, opts ...client.Option) *vowv1.Task {
	t.Helper()
	task, err := vow.Submit(context.Background(), kind, input, opts...)
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	return task
}

// receive waits for a value the handler sends, within testTimeout.
func receive[T any](t *testing.T, values <-chan T, what string) T {
	t.Helper()
	select {
	case value := <-values:
		return value
	case <-time.After(testTimeout):
		t.Fatalf("no %s within %v", what, testTimeout)
		panic("unreachable")
	}
}

func TestWorkerCompletesWithOutput(t *testing.T) {
	server, vow := setup(t)
	runWorker(t, server, greet)

	task := await(t, vow, submit(t, vow, map[string]string{"name": "gopher"}).GetId())
	var output struct{ Greeting string }
	if err := client.Output(task, &output); err != nil {
		t.Fatalf("output: %v", err)
	}
	if output.Greeting != "hello, gopher" {
		t.Errorf("greeting = %q", output.Greeting)
	}
	if task.GetWorkerId() != "go-test" || task.GetAttempt() != 1 {
		t.Errorf("worker %q, attempt %d; want go-test, 1", task.GetWorkerId(), task.GetAttempt())
	}
}

// Progress travels with the next heartbeat, to Get and Watch.
func TestProgressReachesWatchers(t *testing.T) {
	server, vow := setup(t)
	proceed := make(chan struct{})
	runWorker(t, server, func(ctx context.Context, task *worker.Task) (any, error) {
		task.ReportProgress(50, "halfway")
		select {
		case <-proceed:
			return "done", nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	})

	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	id := submit(t, vow, map[string]string{"name": "gopher"}).GetId()
	watcher, err := vow.Watch(ctx, id)
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	defer watcher.Close()
	for {
		event, err := watcher.Recv()
		if err != nil {
			t.Fatalf("no progress before %v", err)
		}
		if progress := event.GetTask().GetProgress(); progress != nil {
			if progress.GetPercent() != 50 || progress.GetMessage() != "halfway" {
				t.Errorf("progress = %v, want 50 %% halfway", progress)
			}
			break
		}
	}
	close(proceed)
	if task := await(t, vow, id); task.GetState() != vowv1.TaskState_TASK_STATE_SUCCEEDED {
		t.Errorf("state = %v, want SUCCEEDED", task.GetState())
	}
}

func TestWorkerErrorCodeReachesTheTask(t *testing.T) {
	server, vow := setup(t)
	runWorker(t, server, func(ctx context.Context, task *worker.Task) (any, error) {
		var input struct{ Code string }
		if err := task.Decode(&input); err != nil {
			return nil, err
		}
		switch {
		case input.Code == "UNAVAILABLE" && task.Attempt == 1:
			return nil, worker.Errorf(codes.Unavailable, "try again").WithRetryDelay(10 * time.Millisecond)
		case input.Code == "UNAVAILABLE":
			return "second time lucky", nil
		case input.Code == "PLAIN":
			return nil, errors.New("a plain Go error")
		}
		return greet(ctx, task)
	})

	// Not retried: INVALID_ARGUMENT, with the handler's reason and metadata
	// (in the task's ErrorInfo, whose domain is the server's "vow").
	task := await(t, vow, submit(t, vow, map[string]string{}).GetId())
	taskErr := client.TaskError(task)
	if task.GetState() != vowv1.TaskState_TASK_STATE_FAILED || status.Code(taskErr) != codes.InvalidArgument {
		t.Fatalf("state %v, error %v; want FAILED with INVALID_ARGUMENT", task.GetState(), taskErr)
	}
	if info := client.ErrorInfo(taskErr); info.GetReason() != "NO_NAME" || info.GetMetadata()["field"] != "name" {
		t.Errorf("ErrorInfo = %v, want reason NO_NAME and the handler's metadata", info)
	}
	if task.GetAttempt() != 1 {
		t.Errorf("attempts = %d, want 1: INVALID_ARGUMENT is not retried", task.GetAttempt())
	}

	// A plain error is UNKNOWN, which is not retried either.
	task = await(t, vow, submit(t, vow, map[string]string{"code": "PLAIN"}).GetId())
	if code := status.Code(client.TaskError(task)); code != codes.Unknown || task.GetAttempt() != 1 {
		t.Errorf("plain error: code %v after %d attempts, want UNKNOWN after 1", code, task.GetAttempt())
	}

	// Retried: UNAVAILABLE, after the delay its RetryInfo asks for.
	task = await(t, vow, submit(t, vow, map[string]string{"code": "UNAVAILABLE"}, client.WithMaxAttempts(2)).GetId())
	if task.GetState() != vowv1.TaskState_TASK_STATE_SUCCEEDED || task.GetAttempt() != 2 {
		t.Errorf("state %v after %d attempts, want SUCCEEDED after 2", task.GetState(), task.GetAttempt())
	}
}

func TestCancelReachesTheHandlerWithinOneHeartbeat(t *testing.T) {
	server, vow := setup(t)
	started := make(chan struct{}, 1)
	stopped := make(chan time.Time, 1)
	runWorker(t, server, func(ctx context.Context, task *worker.Task) (any, error) {
		started <- struct{}{}
		<-ctx.Done()
		stopped <- time.Now()
		return nil, ctx.Err()
	})

	id := submit(t, vow, map[string]string{"name": "gopher"}).GetId()
	receive(t, started, "start of the handler")
	cancelledAt := time.Now()
	if _, err := vow.Cancel(context.Background(), id, "changed my mind"); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	handlerStop := receive(t, stopped, "end of the handler's context")
	// One heartbeat interval, plus the time a heartbeat takes on a loaded machine.
	if elapsed := handlerStop.Sub(cancelledAt); elapsed > heartbeatInterval+500*time.Millisecond {
		t.Errorf("the handler's context ended %v after the cancel, want within one heartbeat (%v)", elapsed, heartbeatInterval)
	}
	if task := await(t, vow, id); task.GetState() != vowv1.TaskState_TASK_STATE_CANCELLED {
		t.Errorf("state = %v, want CANCELLED", task.GetState())
	}
}

func TestAttemptDeadlineIsTheContextDeadline(t *testing.T) {
	server, vow := setup(t)
	type observed struct {
		deadline time.Time
		ok       bool
		err      error
	}
	seen := make(chan observed, 1)
	runWorker(t, server, func(ctx context.Context, task *worker.Task) (any, error) {
		deadline, ok := ctx.Deadline()
		<-ctx.Done()
		seen <- observed{deadline, ok, ctx.Err()}
		return nil, ctx.Err()
	})

	const attemptTimeout = 700 * time.Millisecond
	id := submit(t, vow, map[string]string{"name": "gopher"},
		client.WithAttemptTimeout(attemptTimeout), client.WithMaxAttempts(1)).GetId()
	got := receive(t, seen, "end of the handler's context")
	task := await(t, vow, id)

	want := task.GetStartTime().AsTime().Add(attemptTimeout)
	if !got.ok || got.deadline.Sub(want).Abs() > 50*time.Millisecond {
		t.Errorf("handler deadline %v (set: %v), want the attempt deadline %v", got.deadline, got.ok, want)
	}
	if !errors.Is(got.err, context.DeadlineExceeded) {
		t.Errorf("handler context error = %v, want DeadlineExceeded", got.err)
	}
	if code := status.Code(client.TaskError(task)); code != codes.DeadlineExceeded {
		t.Errorf("task error code = %v, want DEADLINE_EXCEEDED", code)
	}
}

// A worker that stops hands its unfinished leases back: the task runs again
// at once on another worker, without losing an attempt.
func TestShutdownReleasesLeases(t *testing.T) {
	server, vow := setup(t)
	started := make(chan struct{}, 1)
	stopFirst := runWorker(t, server, func(ctx context.Context, task *worker.Task) (any, error) {
		started <- struct{}{}
		<-ctx.Done()
		return nil, ctx.Err()
	}, worker.WithDrainTimeout(100*time.Millisecond))

	id := submit(t, vow, map[string]string{"name": "gopher"}, client.WithMaxAttempts(1)).GetId()
	receive(t, started, "start of the handler")
	stopFirst()

	task, err := vow.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if task.GetState() != vowv1.TaskState_TASK_STATE_QUEUED {
		t.Fatalf("state after the release = %v, want QUEUED", task.GetState())
	}
	runWorker(t, server, greet, worker.WithID("go-test-2"))
	task = await(t, vow, id)
	if task.GetState() != vowv1.TaskState_TASK_STATE_SUCCEEDED || task.GetWorkerId() != "go-test-2" {
		t.Errorf("state %v on %q, want SUCCEEDED on go-test-2 (max_attempts 1: the released attempt does not count)",
			task.GetState(), task.GetWorkerId())
	}
}
