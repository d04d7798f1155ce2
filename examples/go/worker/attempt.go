package worker

import (
	"context"
	"time"

	"example.com/vow/client"
	vowv1 "example.com/vowgen/vow/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	// completeRetryBound is how long a Complete is retried while the
	// server is unreachable; past it the lease lapses and the server
	// retries the attempt anyway.
	completeRetryBound = time.Minute
	// callTimeout bounds one Complete or Release call.
	callTimeout = 10 * time.Second
	// fallbackLease is assumed when a lease says nothing of its length.
	fallbackLease = 30 * time.Second
)

// stopReason says why the worker cancelled a handler's context.
type stopReason int

const (
	notStopped stopReason = iota
	stopCancelled
	stopDeadlinePassed
	stopLeaseLost
	stopWorkerStopping
)

type handlerResult struct {
	output any
	err    error
}

// runAttempt runs the handler of one lease, heartbeating until it returns,
// and then reports the outcome.
func (w *Worker) runAttempt(lease *vowv1.Lease, stopAttempts <-chan struct{}) {
	task := lease.GetTask()
	handler, ok := w.handlers[task.GetKind()]
	if !ok {
		// The server leases only the kinds this worker polled for.
		w.complete(lease.GetToken(), nil, Errorf(codes.Unimplemented, "this worker has no handler for %q", task.GetKind()))
		return
	}

	// Not derived from Run's context: shutdown drains attempts rather than
	// cancelling them at once.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if deadline := lease.GetAttemptDeadline(); deadline != nil {
		var cancelDeadline context.CancelFunc
		ctx, cancelDeadline = context.WithDeadline(ctx, deadline.AsTime())
		defer cancelDeadline()
	}
	handlerTask := &Task{
		ID:          task.GetId(),
		Kind:        task.GetKind(),
		Attempt:     task.GetAttempt(),
		MaxAttempts: task.GetMaxAttempts(),
		Labels:      task.GetLabels(),
		Input:       task.GetInput(),
		Traceparent: lease.GetTraceparent(),
		Tracestate:  lease.GetTracestate(),
		progress:    &progress{},
	}
	results := make(chan handlerResult, 1)
	go func() { results <- callHandler(ctx, handler, handlerTask) }()

	leaseDuration := w.leaseDuration
	if leaseDuration <= 0 {
		leaseDuration = leaseDurationOf(lease)
	}
	interval := leaseDuration / 3
	if interval < 100*time.Millisecond {
		interval = 100 * time.Millisecond
	}
	heartbeats := time.NewTicker(interval)
	defer heartbeats.Stop()
	heartbeatTicks := heartbeats.C
	// Kept on the worker's clock, so a skewed server clock cannot make a
	// live lease look lost.
	leaseEnd := time.Now().Add(leaseDuration)

	stopped := notStopped
	stop := func(reason stopReason) {
		if stopped == notStopped {
			stopped = reason
			cancel()
		}
	}
	deadlineDone := ctx.Done()
	var result handlerResult
	for waiting := true; waiting; {
		select {
		case result = <-results:
			waiting = false
		case <-heartbeatTicks:
			sentAt := time.Now()
			cancelRequested, err := w.heartbeat(lease.GetToken(), handlerTask.progress.get(), interval)
			switch {
			case err == nil:
				leaseEnd = sentAt.Add(leaseDuration)
				if cancelRequested {
					stop(stopCancelled)
				}
			case isLeaseLost(err) || time.Now().After(leaseEnd):
				// Another worker may hold the task by now: stop, and
				// stay silent, since any write would be refused.
				stop(stopLeaseLost)
				heartbeatTicks = nil
			}
		case <-deadlineDone:
			// Done before any stop means the attempt deadline passed.
			stop(stopDeadlinePassed)
			deadlineDone = nil
		case <-stopAttempts:
			stop(stopWorkerStopping)
			stopAttempts = nil
		}
	}
	if stopped == notStopped && result.err != nil && ctx.Err() == context.DeadlineExceeded {
		// The handler saw the deadline before the loop above did.
		stopped = stopDeadlinePassed
	}

	token := lease.GetToken()
	switch {
	case stopped == stopLeaseLost:
	case stopped == stopWorkerStopping:
		w.release(token)
	case stopped == stopCancelled:
		w.complete(token, nil, Errorf(codes.Canceled, "cancelled").WithReason("CANCELLED"))
	case stopped == stopDeadlinePassed && result.err != nil:
		w.complete(token, nil, Errorf(codes.DeadlineExceeded, "the attempt deadline passed").WithReason("ATTEMPT_TIMEOUT"))
	case result.err != nil:
		w.complete(token, nil, errorOf(result.err))
	default:
		w.complete(token, result.output, nil)
	}
}

// leaseDurationOf reads the length of a lease granted with the server's
// default from two server timestamps (grant and expiry), which no clock
// skew between server and worker bends.
func leaseDurationOf(lease *vowv1.Lease) time.Duration {
	expire := lease.GetExpireTime()
	start := lease.GetTask().GetStartTime()
	if expire != nil && start != nil {
		if d := expire.AsTime().Sub(start.AsTime()); d > 0 {
			return d
		}
	}
	if expire != nil {
		if d := time.Until(expire.AsTime()); d > 0 {
			return d
		}
	}
	return fallbackLease
}

// callHandler runs the handler, turning a panic into an INTERNAL failure of
// the attempt so that the worker keeps serving.
func callHandler(ctx context.Context, handler HandlerFunc, task *Task) (result handlerResult) {
	defer func() {
		if recovered := recover(); recovered != nil {
			result = handlerResult{err: Errorf(codes.Internal, "panicked: %v", recovered).WithReason("HANDLER_PANICKED")}
		}
	}()
	output, err := handler(ctx, task)
	return handlerResult{output: output, err: err}
}

// heartbeat renews the lease and reports progress. A failed call is not a
// lost lease by itself: the next tick tries again, until the lease's end.
func (w *Worker) heartbeat(token string, report *vowv1.Progress, timeout time.Duration) (cancelRequested bool, err error) {
	// Bounded by the interval so a hung call never delays the next tick; not
	// by the handler's context, cancelled while the handler winds down.
	callCtx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	response, err := w.workers.Heartbeat(callCtx, &vowv1.HeartbeatRequest{Token: token, Progress: report})
	if err != nil {
		return false, err
	}
	return response.GetCancelRequested(), nil
}

// complete reports the outcome, retrying while the server is unreachable:
// a repeated Complete with the same outcome answers as the first did.
func (w *Worker) complete(token string, output any, handlerError *Error) {
	request := &vowv1.CompleteRequest{Token: token}
	if handlerError != nil {
		request.Outcome = &vowv1.CompleteRequest_Error{Error: handlerError.proto()}
	} else {
		payload, err := client.EncodePayload(output)
		if err != nil {
			request.Outcome = &vowv1.CompleteRequest_Error{
				Error: Errorf(codes.Internal, "handler output: %v", err).WithReason("OUTPUT_NOT_ENCODABLE").proto(),
			}
		} else {
			request.Outcome = &vowv1.CompleteRequest_Output{Output: payload}
		}
	}
	giveUpAt := time.Now().Add(completeRetryBound)
	backoff := 100 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		_, err := w.workers.Complete(ctx, request)
		cancel()
		switch {
		case err == nil:
			return
		case isTransient(err) && time.Now().Add(backoff).Before(giveUpAt):
			time.Sleep(backoff)
			if backoff *= 2; backoff > 5*time.Second {
				backoff = 5 * time.Second
			}
		case isLeaseLost(err):
			// The task moved on without this attempt (cancelled and
			// finished, or re-leased); nothing is left to report.
			return
		default:
			w.logf("vow worker %s: complete refused: %v", w.id, err)
			return
		}
	}
}

// release hands a lease back unfinished, so its task runs again at once.
func (w *Worker) release(token string) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	request := &vowv1.ReleaseRequest{Tokens: []string{token}, Reason: "the worker is shutting down"}
	if _, err := w.workers.Release(ctx, request); err != nil {
		// The lease then lapses instead, and the attempt counts as lost.
		w.logf("vow worker %s: release failed: %v", w.id, err)
	}
}

func isLeaseLost(err error) bool {
	info := client.ErrorInfo(err)
	return status.Code(err) == codes.FailedPrecondition && info != nil && info.GetReason() == "LEASE_LOST"
}

// isTransient tells a failed Complete or Poll worth sending again: the
// server is unreachable or draining (UNAVAILABLE), a proxy reset the stream
// as a replica went away (CANCELLED, INTERNAL, UNKNOWN), or the call ran out
// of its own time. Complete is safe to repeat: a repeated Complete with the
// same token and outcome answers as the first did.
func isTransient(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.Canceled, codes.Internal, codes.Unknown, codes.DeadlineExceeded:
		return true
	}
	return false
}
