package client_test

import (
	"context"
	"io"
	"testing"
	"time"

	"example.com/vow/client"
	"example.com/vow/internal/vowdtest"
	vowv1 "example.com/vowgen/vow/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// testTimeout bounds every wait on a condition: reached only when
// something is broken, never in a passing run.
const testTimeout = 10 * time.Second

func connect(t *testing.T) *client.Client {
	t.Helper()
	return client.New(vowdtest.Start(t, nil).Conn)
}

func TestSubmitThenAwaitWithTimeout(t *testing.T) {
	vow := connect(t)
	ctx := context.Background()

	submitted, err := vow.Submit(ctx, "echo", map[string]string{"hello": "world"})
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	waitCtx, cancel := context.WithTimeout(ctx, testTimeout)
	defer cancel()
	task, done, err := vow.Await(waitCtx, submitted.GetId())
	if err != nil || !done {
		t.Fatalf("await: done=%v err=%v", done, err)
	}
	var output map[string]string
	if err := client.Output(task, &output); err != nil {
		t.Fatalf("output: %v", err)
	}
	if output["hello"] != "world" {
		t.Errorf("output = %v, want the input back", output)
	}

	got, err := vow.Get(ctx, submitted.GetId())
	if err != nil || got.GetState() != vowv1.TaskState_TASK_STATE_SUCCEEDED {
		t.Errorf("get: state %v, err %v", got.GetState(), err)
	}
}

// The context's deadline bounds the waiting, not the task: Await answers
// with the running task and no error, shortly before the deadline.
func TestAwaitEndsBeforeTheContextDeadline(t *testing.T) {
	vow := connect(t)
	ctx := context.Background()
	submitted, err := vow.Submit(ctx, "sleep", map[string]int{"ms": 60000})
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	const wait = 500 * time.Millisecond
	waitCtx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	start := time.Now()
	task, done, err := vow.Await(waitCtx, submitted.GetId())
	elapsed := time.Since(start)
	if err != nil || done {
		t.Fatalf("await: done=%v err=%v, want done=false and no error", done, err)
	}
	if elapsed >= wait {
		t.Errorf("await took %v, want an answer before the %v deadline", elapsed, wait)
	}
	if client.IsTerminal(task) {
		t.Errorf("state = %v, want the task still unfinished", task.GetState())
	}
}

func TestRun(t *testing.T) {
	vow := connect(t)

	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	task, err := vow.Run(ctx, "echo", map[string]int{"n": 1})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	var output map[string]int
	if err := client.Output(task, &output); err != nil || output["n"] != 1 {
		t.Fatalf("output = %v (%v), want the input back", output, err)
	}

	// Run's context deadline is the task's deadline. The server answers a
	// margin (a tenth, up to 100 ms, twice) before it: ~190 ms for a second.
	shortCtx, cancelShort := context.WithTimeout(context.Background(), time.Second)
	defer cancelShort()
	task, err = vow.Run(shortCtx, "sleep", map[string]int{"ms": 60000})
	if err != nil {
		t.Fatalf("run past its deadline: %v, want the failed task", err)
	}
	taskErr := client.TaskError(task)
	if task.GetState() != vowv1.TaskState_TASK_STATE_FAILED || status.Code(taskErr) != codes.DeadlineExceeded {
		t.Fatalf("state %v, error %v; want FAILED with DEADLINE_EXCEEDED", task.GetState(), taskErr)
	}
	if info := client.ErrorInfo(taskErr); info.GetReason() != "TASK_DEADLINE_EXCEEDED" {
		t.Errorf("reason = %q, want TASK_DEADLINE_EXCEEDED", info.GetReason())
	}
}

func TestWatchStreamsEveryRevision(t *testing.T) {
	vow := connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	submitted, err := vow.Submit(ctx, "sleep", map[string]int{"ms": 300})
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	watcher, err := vow.Watch(ctx, submitted.GetId())
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	defer watcher.Close()

	var last *vowv1.WatchResponse
	for {
		event, err := watcher.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		switch {
		case last == nil && event.GetType() != vowv1.WatchEventType_WATCH_EVENT_TYPE_SNAPSHOT:
			t.Fatalf("first event is %v, want a snapshot", event.GetType())
		case last != nil && event.GetType() != vowv1.WatchEventType_WATCH_EVENT_TYPE_CHANGE:
			t.Fatalf("event after the snapshot is %v, want a change", event.GetType())
		case last != nil && event.GetTask().GetRevision() != last.GetTask().GetRevision()+1:
			t.Fatalf("revision %d follows %d", event.GetTask().GetRevision(), last.GetTask().GetRevision())
		}
		last = event
	}
	if last.GetTask().GetState() != vowv1.TaskState_TASK_STATE_SUCCEEDED {
		t.Errorf("last event's state = %v, want SUCCEEDED", last.GetTask().GetState())
	}
}

func TestCancel(t *testing.T) {
	vow := connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	submitted, err := vow.Submit(ctx, "sleep", map[string]int{"ms": 60000})
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	if _, err := vow.Cancel(ctx, submitted.GetId(), "no longer needed"); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	task, done, err := vow.Await(ctx, submitted.GetId())
	if err != nil || !done {
		t.Fatalf("await: done=%v err=%v", done, err)
	}
	if code := status.Code(client.TaskError(task)); task.GetState() != vowv1.TaskState_TASK_STATE_CANCELLED || code != codes.Canceled {
		t.Errorf("state %v, code %v; want CANCELLED", task.GetState(), code)
	}
	if err := client.Output(task, new(any)); status.Code(err) != codes.Canceled {
		t.Errorf("Output of a cancelled task = %v, want its CANCELLED error", err)
	}
}

func TestUnknownTaskIsNotFound(t *testing.T) {
	vow := connect(t)
	_, err := vow.Get(context.Background(), "0123456789abcdef0123456789abcdef")
	if status.Code(err) != codes.NotFound {
		t.Fatalf("get: %v, want NOT_FOUND", err)
	}
	if info := client.ErrorInfo(err); info.GetDomain() != "vow" {
		t.Errorf("ErrorInfo = %v, want one of domain vow", info)
	}
}

// Errors that repeating cannot fix reach the caller after one call, even
// from calls that are retried on transient errors.
func TestNonTransientErrorsAreNotRetried(t *testing.T) {
	server := vowdtest.Start(t, nil)
	vow := client.New(server.Conn)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	if _, err := vow.Get(ctx, "0123456789abcdef0123456789abcdef"); status.Code(err) != codes.NotFound {
		t.Fatalf("get: %v, want NOT_FOUND", err)
	}
	_, err := vow.Submit(ctx, "no-such-kind", nil, client.WithIdempotencyKey(client.NewIdempotencyKey()))
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("submit: %v, want INVALID_ARGUMENT", err)
	}
	for _, method := range []string{"Get", "Submit"} {
		if calls := server.Metric(t, `vow_rpc_requests_total{method="`+method+`"`); calls != 1 {
			t.Errorf("vowd answered %v %s calls, want 1", calls, method)
		}
	}
}
