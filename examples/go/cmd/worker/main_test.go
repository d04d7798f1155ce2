package main

import (
	"context"
	"os"
	"syscall"
	"testing"
	"time"

	"example.com/vow/client"
	"example.com/vow/internal/vowdtest"
	vowv1 "example.com/vowgen/vow/v1"
)

const testTimeout = 10 * time.Second

// The command serves greet until SIGTERM, then releases the lease of the
// attempt still running, whose task is due again at once.
func TestServesUntilSigterm(t *testing.T) {
	server := vowdtest.Start(t, []string{"greet"})
	vow := client.New(server.Conn)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	stopped := make(chan error, 1)
	go func() { stopped <- run([]string{"-server", server.Addr, "-drain-timeout", "100ms"}) }()

	quick, err := vow.Submit(ctx, "greet", greetInput{Name: "gopher", Steps: 2})
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	task, done, err := vow.Await(ctx, quick.GetId())
	var output greetOutput
	if err != nil || !done || client.Output(task, &output) != nil || output.Greeting != "hello, gopher" {
		t.Fatalf("await: done=%v err=%v task=%v", done, err, task)
	}

	slow, err := vow.Submit(ctx, "greet", greetInput{Name: "snail", Steps: 1000}, client.WithMaxAttempts(1))
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	// Progress proves the worker holds the lease: RUNNING alone does not,
	// since a SIGTERM may then still cancel the Poll whose answer carries it.
	waitFor(ctx, t, vow, slow.GetId(), func(task *vowv1.Task) bool { return task.GetProgress() != nil })

	// The signal reaches run's signal.NotifyContext, registered before the
	// worker took the task, not the test process's default handler.
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatalf("kill: %v", err)
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-ctx.Done():
		t.Fatalf("the worker did not stop after SIGTERM")
	}
	task, err = vow.Get(ctx, slow.GetId())
	if err != nil || task.GetState() != vowv1.TaskState_TASK_STATE_QUEUED {
		t.Fatalf("after SIGTERM: state %v, err %v; want QUEUED (released)", task.GetState(), err)
	}
}

// waitFor watches a task until reached holds.
func waitFor(ctx context.Context, t *testing.T, vow *client.Client, id string, reached func(*vowv1.Task) bool) {
	t.Helper()
	watcher, err := vow.Watch(ctx, id)
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	defer watcher.Close()
	for {
		event, err := watcher.Recv()
		if err != nil {
			t.Fatalf("task %s: the awaited change never came: %v", id, err)
		}
		if reached(event.GetTask()) {
			return
		}
	}
}
