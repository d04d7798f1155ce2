// Package client is a small Go client of Vow's TaskService: submit a task,
// then wait for it, watch it or cancel it, with context.Context carrying
// every deadline and cancellation.
//
// Time follows the server's one model. A context's deadline bounds only the
// waiting in Await and Watch, never the task: a wait that runs out answers
// with the task still running, not with an error. Run is the exception: the
// task is bound to the call, so its context's deadline is the task's
// deadline and cancelling the context cancels the task.
//
//	vow, err := client.Dial(ctx, "127.0.0.1:50051")
//	task, err := vow.Submit(ctx, "resize", Image{URL: url}, client.WithAttemptTimeout(30*time.Second))
//	waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
//	task, done, err := vow.Await(waitCtx, task.Id) // done == false: still running after ~10 s
//	var out Thumbnail
//	err = client.Output(task, &out)                // the task's own error if it failed
//
// Calls that change nothing when repeated (Get, Await, AwaitMany, List,
// Cancel, Delete, Submit, which always sends an idempotency key, and Watch,
// resumed after the last revision it delivered) ride through a rolling
// restart: they are retried on UNAVAILABLE, and on what proxies make of a
// stream reset by a replica going away (CANCELLED that the caller's context
// did not cause, INTERNAL, UNKNOWN), up to 8 attempts with exponential
// backoff and full jitter (100 ms doubling to 2 s, or the server's
// RetryInfo), never past the context's deadline. Run is retried on
// UNAVAILABLE only: a Run that was served is a task, and a second one would
// be another.
package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"time"

	vowv1 "example.com/vowgen/vow/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Client calls one vowd (or a load balancer in front of several).
type Client struct {
	conn  grpc.ClientConnInterface
	owned *grpc.ClientConn
	tasks vowv1.TaskServiceClient
}

// Dial connects to vowd at target. With no options it connects in
// plaintext and without blocking; options replace that default entirely,
// so pass credentials (or grpc.WithInsecure) along with any other option.
func Dial(ctx context.Context, target string, opts ...grpc.DialOption) (*Client, error) {
	if len(opts) == 0 {
		opts = []grpc.DialOption{grpc.WithInsecure()}
	}
	conn, err := grpc.DialContext(ctx, target, opts...)
	if err != nil {
		return nil, err
	}
	client := New(conn)
	client.owned = conn
	return client, nil
}

// New returns a client over an existing connection, which the caller keeps
// and closes.
func New(conn grpc.ClientConnInterface) *Client {
	return &Client{conn: conn, tasks: vowv1.NewTaskServiceClient(conn)}
}

// Close closes the connection Dial opened; it does nothing for New's.
func (c *Client) Close() error {
	if c.owned == nil {
		return nil
	}
	return c.owned.Close()
}

// Conn returns the client's connection, to share with a worker or with
// stubs of other services.
func (c *Client) Conn() grpc.ClientConnInterface { return c.conn }

// Tasks returns the generated TaskService stub, for the calls this package
// does not wrap (ListKinds), and for calls without its retries.
func (c *Client) Tasks() vowv1.TaskServiceClient { return c.tasks }

// Option sets a field of a submitted (or run) task.
type Option func(*vowv1.SubmitRequest)

// WithAttemptTimeout bounds each attempt: past it the handler's context is
// done and the attempt fails DEADLINE_EXCEEDED, which is retried.
func WithAttemptTimeout(timeout time.Duration) Option {
	return func(r *vowv1.SubmitRequest) { r.AttemptTimeout = durationpb.New(timeout) }
}

// WithDeadline bounds the whole task: past it no attempt starts, a running
// one is cancelled, and the task FAILS with DEADLINE_EXCEEDED.
func WithDeadline(deadline time.Time) Option {
	return func(r *vowv1.SubmitRequest) { r.Deadline = timestamppb.New(deadline) }
}

// WithTTL bounds the whole task relative to now, like WithDeadline.
func WithTTL(ttl time.Duration) Option {
	return func(r *vowv1.SubmitRequest) { r.Ttl = durationpb.New(ttl) }
}

// WithLabels adds labels, for filtering in List and Watch.
func WithLabels(labels map[string]string) Option {
	return func(r *vowv1.SubmitRequest) {
		if r.Labels == nil {
			r.Labels = make(map[string]string, len(labels))
		}
		for key, value := range labels {
			r.Labels[key] = value
		}
	}
}

// WithPriority runs the task before due tasks of lower priority (-1000 to 1000).
func WithPriority(priority int32) Option {
	return func(r *vowv1.SubmitRequest) { r.Priority = priority }
}

// WithNotBefore delays the first attempt until notBefore.
func WithNotBefore(notBefore time.Time) Option {
	return func(r *vowv1.SubmitRequest) { r.NotBefore = timestamppb.New(notBefore) }
}

// WithRetry sets the retry policy; its unset fields take the server's defaults.
func WithRetry(policy *vowv1.RetryPolicy) Option {
	return func(r *vowv1.SubmitRequest) { r.Retry = policy }
}

// WithMaxAttempts sets how many attempts the task gets, the first included.
func WithMaxAttempts(attempts uint32) Option {
	return func(r *vowv1.SubmitRequest) {
		if r.Retry == nil {
			r.Retry = &vowv1.RetryPolicy{}
		}
		r.Retry.MaxAttempts = attempts
	}
}

// WithRetention keeps the finished task this long (capped by the server).
func WithRetention(retention time.Duration) Option {
	return func(r *vowv1.SubmitRequest) { r.Retention = durationpb.New(retention) }
}

// WithIdempotencyKey makes the submit safe to repeat: the same key and the
// same request return the task the first one created, so that Submit may
// retry after a lost reply. Submit makes one up when none is given: set your
// own to make your own resubmits (after a crash, say) safe too.
func WithIdempotencyKey(key string) Option {
	return func(r *vowv1.SubmitRequest) { r.IdempotencyKey = key }
}

// NewIdempotencyKey returns a random key (128 bits, hex) for
// WithIdempotencyKey: one per task the caller means to create, kept if the
// caller itself submits that task again.
func NewIdempotencyKey() string {
	var key [16]byte
	if _, err := rand.Read(key[:]); err != nil {
		// crypto/rand fails only when the OS has no randomness to give.
		panic("vow client: no randomness for an idempotency key: " + err.Error())
	}
	return hex.EncodeToString(key[:])
}

func submitRequest(kind string, input any, opts []Option) (*vowv1.SubmitRequest, error) {
	payload, err := EncodePayload(input)
	if err != nil {
		return nil, err
	}
	request := &vowv1.SubmitRequest{Kind: kind, Input: payload}
	for _, opt := range opts {
		opt(request)
	}
	return request, nil
}

// Submit enqueues a task of kind with input (encoded by EncodePayload) and
// returns it as stored. ctx bounds the call only. Without
// WithIdempotencyKey it makes a key up, as the Rust and Python clients do,
// so that its own retries after a lost reply create one task.
func (c *Client) Submit(ctx context.Context, kind string, input any, opts ...Option) (*vowv1.Task, error) {
	request, err := submitRequest(kind, input, opts)
	if err != nil {
		return nil, err
	}
	if request.IdempotencyKey == "" {
		request.IdempotencyKey = NewIdempotencyKey()
	}
	var response *vowv1.SubmitResponse
	err = retry(ctx, repeatSafe, func(ctx context.Context) (err error) {
		response, err = c.tasks.Submit(ctx, request)
		return err
	})
	return response.GetTask(), err
}

// Get returns the current snapshot of a task; it never waits for it.
func (c *Client) Get(ctx context.Context, id string) (*vowv1.Task, error) {
	var response *vowv1.GetResponse
	err := retry(ctx, repeatSafe, func(ctx context.Context) (err error) {
		response, err = c.tasks.Get(ctx, &vowv1.GetRequest{Id: id})
		return err
	})
	return response.GetTask(), err
}

// awaitRenewal is how much of the context must be left after the server
// ended a wait early (its own maximum wait) for Await to wait again. The
// server answers a margin before the context's deadline; that answer must
// be returned, not chased with a wait that cannot finish.
const awaitRenewal = time.Second

// Await waits until the task is terminal or ctx is nearly done. When the
// wait runs out it returns the latest snapshot with done == false and a nil
// error: the server answers a margin before ctx's deadline, so a running
// task never surfaces as DEADLINE_EXCEEDED. Without a deadline it waits
// until the task finishes or ctx is cancelled.
func (c *Client) Await(ctx context.Context, id string) (task *vowv1.Task, done bool, err error) {
	for {
		var response *vowv1.AwaitResponse
		err = retry(ctx, repeatSafe, func(ctx context.Context) (err error) {
			response, err = c.tasks.Await(ctx, &vowv1.AwaitRequest{Id: id})
			return err
		})
		if err != nil {
			return task, false, err
		}
		task = response.GetTask()
		if response.GetDone() {
			return task, true, nil
		}
		deadline, ok := ctx.Deadline()
		if ok && time.Until(deadline) < awaitRenewal {
			return task, false, nil
		}
	}
}

// Run submits a task and waits for it in one call bound to ctx: ctx's
// deadline becomes the task's deadline (the server ends it FAILED with
// DEADLINE_EXCEEDED and answers just before that deadline), and cancelling
// ctx cancels the task. It returns the terminal snapshot. The server's
// margin is small (a tenth of the time, at most 100 ms, taken twice): give
// Run a deadline of a second or more, or a slow network may deliver the
// answer after ctx's deadline, as a DEADLINE_EXCEEDED error of the call.
// Retried on UNAVAILABLE only (the call was not served); a retry's task
// gets what is left of ctx's deadline.
func (c *Client) Run(ctx context.Context, kind string, input any, opts ...Option) (*vowv1.Task, error) {
	submit, err := submitRequest(kind, input, opts)
	if err != nil {
		return nil, err
	}
	request := &vowv1.RunRequest{
		Kind:           submit.Kind,
		Input:          submit.Input,
		Labels:         submit.Labels,
		Priority:       submit.Priority,
		NotBefore:      submit.NotBefore,
		Retry:          submit.Retry,
		AttemptTimeout: submit.AttemptTimeout,
		Deadline:       submit.Deadline,
		Ttl:            submit.Ttl,
		Retention:      submit.Retention,
		IdempotencyKey: submit.IdempotencyKey,
	}
	var response *vowv1.RunResponse
	err = retry(ctx, repeatIfUnserved, func(ctx context.Context) (err error) {
		response, err = c.tasks.Run(ctx, request)
		return err
	})
	return response.GetTask(), err
}

// Cancel asks a task to stop and returns its snapshot: CANCELLED, or still
// RUNNING with CancelRequested until its handler stops. Cancelling a
// finished task changes nothing.
func (c *Client) Cancel(ctx context.Context, id, reason string) (*vowv1.Task, error) {
	var response *vowv1.CancelResponse
	err := retry(ctx, repeatSafe, func(ctx context.Context) (err error) {
		response, err = c.tasks.Cancel(ctx, &vowv1.CancelRequest{Id: id, Reason: reason})
		return err
	})
	return response.GetTask(), err
}

// AwaitMany waits for several tasks (request.Mode: all of them, or the
// first); see Await for how ctx's deadline bounds it. A retry asks the
// server only for what is left of request.Timeout.
func (c *Client) AwaitMany(ctx context.Context, request *vowv1.AwaitManyRequest) (*vowv1.AwaitManyResponse, error) {
	var response *vowv1.AwaitManyResponse
	var waitEnd time.Time
	if request.GetTimeout() != nil {
		waitEnd = time.Now().Add(request.GetTimeout().AsDuration())
	}
	err := retry(ctx, repeatSafe, func(ctx context.Context) (err error) {
		attempt := request
		if !waitEnd.IsZero() {
			attempt = proto.Clone(request).(*vowv1.AwaitManyRequest)
			attempt.Timeout = durationpb.New(time.Until(waitEnd))
		}
		response, err = c.tasks.AwaitMany(ctx, attempt)
		return err
	})
	return response, err
}

// List returns one page of tasks; pass the response's NextPageToken as
// the next request's PageToken.
func (c *Client) List(ctx context.Context, request *vowv1.ListRequest) (*vowv1.ListResponse, error) {
	var response *vowv1.ListResponse
	err := retry(ctx, repeatSafe, func(ctx context.Context) (err error) {
		response, err = c.tasks.List(ctx, request)
		return err
	})
	return response, err
}

// Delete removes a finished task (a running one too with cancelIfRunning).
// Repeated after a lost reply, it may answer NOT_FOUND for the task the
// first attempt deleted.
func (c *Client) Delete(ctx context.Context, id string, cancelIfRunning bool) error {
	return retry(ctx, repeatSafe, func(ctx context.Context) error {
		_, err := c.tasks.Delete(ctx, &vowv1.DeleteRequest{Id: id, CancelIfRunning: cancelIfRunning})
		return err
	})
}
