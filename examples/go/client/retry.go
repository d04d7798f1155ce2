package client

import (
	"context"
	"math/rand"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Retry bounds, the Rust client's and the Python package's: about 7 s of
// pauses in all, enough to ride through a replica's restart behind a
// proxy. A server that stays away longer is an outage to report, not to
// hide; and the caller's context bounds every attempt and pause together.
const (
	retryAttempts       = 8 // the first included
	retryInitialBackoff = 100 * time.Millisecond
	retryMaxBackoff     = 2 * time.Second
)

// repeat says which failures a call may be sent again after.
type repeat int

const (
	// repeatSafe is for calls whose repetition changes nothing (Get, Await,
	// AwaitMany, List, Cancel, Delete, a keyed Submit, a resumed Watch):
	// UNAVAILABLE, and what proxies make of a stream reset by a server
	// going away (CANCELLED the caller did not ask for, INTERNAL, UNKNOWN).
	// Such a call may have been served already; repeating it is harmless.
	repeatSafe repeat = iota
	// repeatIfUnserved is for Run: only UNAVAILABLE, which says the call
	// was not served (AIP-194). A Run that was served is a task; a second
	// one would be another.
	repeatIfUnserved
)

// mayRepeat tells whether err, from a call made with ctx, is worth sending
// again under rule.
func mayRepeat(ctx context.Context, err error, rule repeat) bool {
	if err == nil || ctx.Err() != nil {
		// The caller's own cancellation or deadline: never retried.
		return false
	}
	rpcStatus, ok := status.FromError(err)
	if !ok {
		return false // not a gRPC error: nothing the server said
	}
	switch rpcStatus.Code() {
	case codes.Unavailable:
		return true
	case codes.Canceled, codes.Internal, codes.Unknown:
		return rule == repeatSafe
	}
	return false
}

// backoff paces the attempts of one call (or one watch): exponential with
// full jitter, at most retryAttempts in all, never past ctx's deadline.
type backoff struct {
	attempts int
	ceiling  time.Duration
}

func newBackoff() *backoff { return &backoff{attempts: 1, ceiling: retryInitialBackoff} }

// wait sleeps before the next attempt after err and reports whether to make
// it: false when err must not be retried, the attempts are spent, or the
// pause would end past ctx's deadline (the caller then gets err itself).
// A google.rpc.RetryInfo in err sets the pause instead of the jitter.
func (b *backoff) wait(ctx context.Context, err error, rule repeat) bool {
	if !mayRepeat(ctx, err, rule) || b.attempts >= retryAttempts {
		return false
	}
	pause := jitter(b.ceiling)
	if delay, ok := retryDelay(err); ok {
		pause = delay
	}
	if deadline, ok := ctx.Deadline(); ok && !time.Now().Add(pause).Before(deadline) {
		return false
	}
	timer := time.NewTimer(pause)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
	}
	b.attempts++
	if b.ceiling *= 2; b.ceiling > retryMaxBackoff {
		b.ceiling = retryMaxBackoff
	}
	return true
}

// jitterSource is seeded per process (Go 1.19's global source is not), so
// that clients restarted together do not retry in step.
var jitterSource = struct {
	sync.Mutex
	*rand.Rand
}{Rand: rand.New(rand.NewSource(time.Now().UnixNano()))}

// jitter is a uniformly random pause from 0 to ceiling: "full jitter".
func jitter(ceiling time.Duration) time.Duration {
	jitterSource.Lock()
	defer jitterSource.Unlock()
	return time.Duration(jitterSource.Int63n(int64(ceiling) + 1))
}

// reset starts afresh after progress: a watch that delivered a message.
func (b *backoff) reset() { *b = *newBackoff() }

// retryDelay is the pause a google.rpc.RetryInfo in err asks for.
func retryDelay(err error) (time.Duration, bool) {
	for _, detail := range status.Convert(err).Details() {
		if info, ok := detail.(*errdetails.RetryInfo); ok && info.GetRetryDelay() != nil {
			return info.GetRetryDelay().AsDuration(), true
		}
	}
	return 0, false
}

// retry runs call until it succeeds or wait says to stop, and returns its
// last error.
func retry(ctx context.Context, rule repeat, call func(context.Context) error) error {
	b := newBackoff()
	for {
		err := call(ctx)
		if !b.wait(ctx, err, rule) {
			return err
		}
	}
}
