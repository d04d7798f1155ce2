// Package worker runs tasks of remote kinds in Go, through Vow's
// WorkerService, the way the Rust worker does: it long-polls leases as
// slots free up, calls the kind's handler with a context, renews the lease
// at a third of its duration while the handler runs, and completes the
// attempt with the handler's output or error.
//
// The handler's context is its whole contract with time:
//   - its deadline is the lease's attempt_deadline (the earlier of the
//     attempt timeout and the task deadline), through context.WithDeadline;
//   - it is cancelled when a heartbeat learns the task was cancelled, when
//     the lease is lost, or when the worker gives up on draining.
//
// A handler returns when its context is done; what it returns then matters
// little, since the worker reports the cancellation or the timeout itself.
//
//	w := worker.New(conn)
//	w.Handle("resize", func(ctx context.Context, task *worker.Task) (any, error) {
//		var image Image
//		if err := task.Decode(&image); err != nil {
//			return nil, worker.Errorf(codes.InvalidArgument, "bad input: %v", err)
//		}
//		return resize(ctx, image) // returns early with ctx.Err() when ctx is done
//	})
//	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
//	defer stop()
//	err := w.Run(ctx) // until SIGTERM; then drains and hands unfinished leases back
package worker

import (
	"context"
	"errors"
	"fmt"
	"log"
	"math/rand"
	"os"
	"sort"
	"sync"
	"time"

	vowv1 "example.com/vowgen/vow/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// HandlerFunc runs one attempt of a task. Its output is encoded like a
// client input (client.EncodePayload: JSON, or []byte as binary); its
// error decides the retry (see Error).
type HandlerFunc func(ctx context.Context, task *Task) (any, error)

const (
	// pollWait is how long one Poll waits for work before asking again.
	pollWait = 30 * time.Second
	// pollBackoff and pollMaxBackoff bound the pause after a failed Poll:
	// exponential with full jitter, from the first up to the second, so
	// that a Poll ended by a draining replica goes on at another at once,
	// and a server that stays away is asked every 2 s at most.
	pollBackoff    = 100 * time.Millisecond
	pollMaxBackoff = 2 * time.Second
)

// Worker runs handlers of remote kinds; configure it, then call Run.
type Worker struct {
	workers       vowv1.WorkerServiceClient
	handlers      map[string]HandlerFunc
	id            string
	concurrency   int
	leaseDuration time.Duration
	drainTimeout  time.Duration
	logf          func(format string, args ...any)
}

// Option configures a Worker.
type Option func(*Worker)

// WithID names the worker in tasks (Task.worker_id), logs and metrics;
// the default is <hostname>-<pid>.
func WithID(id string) Option { return func(w *Worker) { w.id = id } }

// WithConcurrency sets how many attempts run at once (default 4).
func WithConcurrency(attempts int) Option {
	return func(w *Worker) {
		if attempts > 0 {
			w.concurrency = attempts
		}
	}
}

// WithLeaseDuration asks for leases of this length (default: the
// server's); each is renewed at a third of it.
func WithLeaseDuration(lease time.Duration) Option {
	return func(w *Worker) { w.leaseDuration = lease }
}

// WithDrainTimeout sets how long running attempts may go on once Run's
// context is done, before their contexts are cancelled and their leases
// released (default 30 s).
func WithDrainTimeout(timeout time.Duration) Option {
	return func(w *Worker) { w.drainTimeout = timeout }
}

// WithLogf sends the worker's few log lines (a dropped Complete, a failing
// Poll) to logf instead of the standard logger.
func WithLogf(logf func(format string, args ...any)) Option {
	return func(w *Worker) { w.logf = logf }
}

// New returns a worker that calls the WorkerService over conn.
func New(conn grpc.ClientConnInterface, opts ...Option) *Worker {
	host, err := os.Hostname()
	if err != nil {
		host = "worker"
	}
	w := &Worker{
		workers:      vowv1.NewWorkerServiceClient(conn),
		handlers:     map[string]HandlerFunc{},
		id:           fmt.Sprintf("%s-%d", host, os.Getpid()),
		concurrency:  4,
		drainTimeout: 30 * time.Second,
		logf:         log.Printf,
	}
	for _, opt := range opts {
		opt(w)
	}
	return w
}

// Handle registers the handler of a remote kind. Call it before Run.
func (w *Worker) Handle(kind string, handler HandlerFunc) {
	w.handlers[kind] = handler
}

// Run polls for the registered kinds and runs their attempts until ctx is
// done. Then it stops polling, lets running attempts finish for the drain
// timeout, cancels the rest and releases their leases, so their tasks run
// again at once without losing an attempt. It returns nil after a shutdown,
// or the error of a Poll the server refused (an undeclared kind, say),
// after draining likewise; an unreachable server is retried.
func (w *Worker) Run(ctx context.Context) error {
	if len(w.handlers) == 0 {
		return errors.New("worker: no handler registered")
	}
	kinds := make([]string, 0, len(w.handlers))
	for kind := range w.handlers {
		kinds = append(kinds, kind)
	}
	sort.Strings(kinds)

	slots := make(chan struct{}, w.concurrency)
	stopAttempts := make(chan struct{})
	var attempts sync.WaitGroup
	err := w.poll(ctx, kinds, slots, func(lease *vowv1.Lease) {
		attempts.Add(1)
		go func() {
			defer attempts.Done()
			defer func() { <-slots }()
			w.runAttempt(lease, stopAttempts)
		}()
	})

	drained := make(chan struct{})
	go func() {
		attempts.Wait()
		close(drained)
	}()
	timer := time.NewTimer(w.drainTimeout)
	defer timer.Stop()
	select {
	case <-drained:
	case <-timer.C:
		close(stopAttempts)
		<-drained
	}
	return err
}

// poll leases tasks while slots are free, until ctx is done (nil) or the
// server refuses the poll (its error).
func (w *Worker) poll(ctx context.Context, kinds []string, slots chan struct{}, start func(*vowv1.Lease)) error {
	backoff := pollBackoff
	// Seeded per worker (Go 1.19's global source is not), so that workers
	// restarted together do not poll in step.
	jitter := rand.New(rand.NewSource(time.Now().UnixNano()))
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		free := 1
		for free < cap(slots) && tryAcquire(slots) {
			free++
		}
		leases, err := w.pollOnce(ctx, kinds, free)
		for _, lease := range leases {
			start(lease)
		}
		for unused := free - len(leases); unused > 0; unused-- {
			<-slots
		}
		switch {
		case ctx.Err() != nil:
			return nil
		case err == nil:
			backoff = pollBackoff
		case isRefusal(err):
			return fmt.Errorf("worker: poll refused: %w", err)
		default:
			pause := time.Duration(jitter.Int63n(int64(backoff) + 1))
			w.logf("vow worker %s: poll failed, retrying in %v: %v", w.id, pause.Round(time.Millisecond), err)
			if !sleep(ctx, pause) {
				return nil
			}
			if backoff *= 2; backoff > pollMaxBackoff {
				backoff = pollMaxBackoff
			}
		}
	}
}

func (w *Worker) pollOnce(ctx context.Context, kinds []string, maxTasks int) ([]*vowv1.Lease, error) {
	request := &vowv1.PollRequest{
		Kinds:    kinds,
		WorkerId: w.id,
		MaxTasks: uint32(maxTasks),
		Timeout:  durationpb.New(pollWait),
	}
	if w.leaseDuration > 0 {
		request.LeaseDuration = durationpb.New(w.leaseDuration)
	}
	// The call's deadline lies past the requested wait, so an idle poll
	// ends with OK and no leases rather than DEADLINE_EXCEEDED.
	callCtx, cancel := context.WithTimeout(ctx, pollWait+5*time.Second)
	defer cancel()
	response, err := w.workers.Poll(callCtx, request)
	return response.GetLeases(), err
}

// isRefusal tells a poll the server will refuse again (bad kinds, missing
// permission) from a passing failure worth retrying.
func isRefusal(err error) bool {
	switch status.Code(err) {
	case codes.InvalidArgument, codes.NotFound, codes.AlreadyExists, codes.PermissionDenied,
		codes.FailedPrecondition, codes.OutOfRange, codes.Unimplemented, codes.Unauthenticated:
		return true
	}
	return false
}

func tryAcquire(slots chan struct{}) bool {
	select {
	case slots <- struct{}{}:
		return true
	default:
		return false
	}
}

// sleep waits for d, or less if ctx ends first (false then).
func sleep(ctx context.Context, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}
