package client_test

import (
	"context"
	"io"
	"path/filepath"
	"testing"
	"time"

	"example.com/vow/client"
	"example.com/vow/internal/vowdtest"
	vowv1 "example.com/vowgen/vow/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// quickReconnect replaces grpc-go's reconnect backoff (1 s, growing 1.6
// times) for a client dialled straight to the one vowd a test restarts:
// the channel notices the successor within a quarter of a second.
var quickReconnect = grpc.WithConnectParams(grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 250 * time.Millisecond},
	MinConnectTimeout: time.Second,
})

// dialRestartable dials addr without blocking, for a vowd that will stop
// and start again there.
func dialRestartable(t *testing.T, addr string, opts ...grpc.DialOption) *client.Client {
	t.Helper()
	vow, err := client.Dial(context.Background(), addr, append(opts, grpc.WithInsecure(), quickReconnect)...)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { vow.Close() })
	return vow
}

// A draining vowd ends an open Await UNAVAILABLE (SHUTTING_DOWN); the
// client's Await waits again at the vowd that takes over the address and
// the data directory, and returns the task's result.
func TestAwaitRidesThroughARestart(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	first := vowdtest.StartConfig(t, vowdtest.Config{DataDir: dataDir})
	vow := dialRestartable(t, first.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	// Long enough to be running when vowd stops: the drain (100 ms) hands
	// the attempt back, and the successor runs it again.
	submitted, err := vow.Submit(ctx, "sleep", map[string]int{"ms": 800}, client.WithIdempotencyKey(client.NewIdempotencyKey()))
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	type awaited struct {
		task *vowv1.Task
		done bool
		err  error
	}
	retrying := make(chan awaited, 1)
	go func() {
		task, done, err := vow.Await(ctx, submitted.GetId())
		retrying <- awaited{task, done, err}
	}()
	// The generated stub, without the client's retries: what the drain
	// answers.
	bare := make(chan error, 1)
	go func() {
		_, err := vow.Tasks().Await(ctx, &vowv1.AwaitRequest{Id: submitted.GetId()})
		bare <- err
	}()
	vowdtest.Eventually(t, testTimeout, "both Awaits to wait at vowd", func() bool {
		return first.Metric(t, "vow_live_waiters") >= 2
	})

	first.Terminate(t)
	err = <-bare
	if status.Code(err) != codes.Unavailable || client.ErrorInfo(err).GetReason() != "SHUTTING_DOWN" {
		t.Fatalf("the bare Await ended with %v, want UNAVAILABLE with reason SHUTTING_DOWN", err)
	}
	vowdtest.StartConfig(t, vowdtest.Config{DataDir: dataDir, Listen: first.Addr})

	result := <-retrying
	if result.err != nil || !result.done {
		t.Fatalf("the retrying Await: done=%v err=%v, want the finished task", result.done, result.err)
	}
	var output map[string]any
	if err := client.Output(result.task, &output); err != nil {
		t.Fatalf("output: %v", err)
	}
}

// A watch broken by the drain resumes after its last revision at the
// successor, which streams every later change exactly once.
func TestWatchResumesAcrossARestart(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	kinds := []string{"go-restart"}
	first := vowdtest.StartConfig(t, vowdtest.Config{DataDir: dataDir, RemoteKinds: kinds})
	vow := dialRestartable(t, first.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	// A remote kind with no worker yet: the task stays QUEUED, unchanged,
	// until the test leases it at the successor.
	submitted, err := vow.Submit(ctx, "go-restart", map[string]int{"n": 1}, client.WithIdempotencyKey(client.NewIdempotencyKey()))
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	watcher, err := vow.Watch(ctx, submitted.GetId())
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	defer watcher.Close()
	snapshot, err := watcher.Recv()
	if err != nil {
		t.Fatalf("recv the snapshot: %v", err)
	}
	// Everything the watch delivers after the snapshot, and how it ended.
	type watched struct {
		events []*vowv1.WatchResponse
		err    error
	}
	rest := make(chan watched, 1)
	go func() {
		var events []*vowv1.WatchResponse
		for {
			event, err := watcher.Recv()
			if err != nil {
				rest <- watched{events, err}
				return
			}
			events = append(events, event)
		}
	}()

	first.Terminate(t)
	second := vowdtest.StartConfig(t, vowdtest.Config{DataDir: dataDir, Listen: first.Addr, RemoteKinds: kinds})
	vowdtest.Eventually(t, testTimeout, "the watch to resume at the successor", func() bool {
		return second.Metric(t, "vow_live_watchers") >= 1
	})

	// Lease and complete the task, as a worker would.
	workers := vowv1.NewWorkerServiceClient(second.Conn)
	polled, err := workers.Poll(ctx, &vowv1.PollRequest{Kinds: kinds, WorkerId: "restart-test", MaxTasks: 1, Timeout: durationpb.New(5 * time.Second)})
	if err != nil || len(polled.GetLeases()) != 1 {
		t.Fatalf("poll: %v leases, err %v", len(polled.GetLeases()), err)
	}
	output, err := client.EncodePayload(map[string]string{"done": "yes"})
	if err != nil {
		t.Fatal(err)
	}
	complete := &vowv1.CompleteRequest{Token: polled.GetLeases()[0].GetToken(), Outcome: &vowv1.CompleteRequest_Output{Output: output}}
	if _, err := workers.Complete(ctx, complete); err != nil {
		t.Fatalf("complete: %v", err)
	}

	var result watched
	select {
	case result = <-rest:
	case <-time.After(testTimeout):
		t.Fatalf("the watch did not end within %v", testTimeout)
	}
	if result.err != io.EOF {
		t.Fatalf("the watch ended with %v, want io.EOF after the terminal change", result.err)
	}
	revisions := []uint64{snapshot.GetTask().GetRevision()}
	var last *vowv1.WatchResponse
	for _, event := range result.events {
		if event.GetType() != vowv1.WatchEventType_WATCH_EVENT_TYPE_CHANGE {
			t.Fatalf("event %v after the restart, want only changes", event.GetType())
		}
		revisions = append(revisions, event.GetTask().GetRevision())
		last = event
	}
	for i := 1; i < len(revisions); i++ {
		if revisions[i] != revisions[i-1]+1 {
			t.Fatalf("revisions %v: not one above the other at %d", revisions, i)
		}
	}
	if last.GetTask().GetState() != vowv1.TaskState_TASK_STATE_SUCCEEDED {
		t.Errorf("last state %v (revisions %v), want SUCCEEDED", last.GetTask().GetState(), revisions)
	}
}
