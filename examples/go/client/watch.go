package client

import (
	"context"
	"io"

	vowv1 "example.com/vowgen/vow/v1"
)

// Watcher reads the events of a watch. Heartbeats (which exist only to keep
// proxies from closing idle streams) are skipped.
type Watcher struct {
	ctx     context.Context
	cancel  context.CancelFunc
	tasks   vowv1.TaskServiceClient
	request *vowv1.WatchRequest
	stream  vowv1.TaskService_WatchClient
	backoff *backoff
}

// Watch streams the changes of one task: first its current snapshot, then
// every change in revision order. Recv returns io.EOF after the terminal
// change, or when ctx's deadline ends the watch. A broken stream is
// resumed after the last revision received, without a gap (see Recv).
func (c *Client) Watch(ctx context.Context, id string) (*Watcher, error) {
	return c.watch(ctx, &vowv1.WatchRequest{Id: id})
}

// Filter selects the tasks of a WatchMatching; empty fields match everything.
type Filter struct {
	Kinds  []string
	Labels map[string]string
	States []vowv1.TaskState
}

// WatchMatching streams the changes of every task that matches filter,
// until ctx is done (Recv then returns io.EOF or ctx's error). Unlike a
// single-task watch it is not resumed: after an error, List and watch again.
func (c *Client) WatchMatching(ctx context.Context, filter Filter) (*Watcher, error) {
	return c.watch(ctx, &vowv1.WatchRequest{Kinds: filter.Kinds, Labels: filter.Labels, States: filter.States})
}

func (c *Client) watch(ctx context.Context, request *vowv1.WatchRequest) (*Watcher, error) {
	ctx, cancel := context.WithCancel(ctx)
	w := &Watcher{ctx: ctx, cancel: cancel, tasks: c.tasks, request: request, backoff: newBackoff()}
	if err := w.open(); err != nil {
		cancel()
		return nil, err
	}
	return w, nil
}

// open starts the stream, retrying while it cannot (no server to reach).
func (w *Watcher) open() error {
	for {
		var err error
		w.stream, err = w.tasks.Watch(w.ctx, w.request)
		if !w.backoff.wait(w.ctx, err, repeatSafe) {
			return err
		}
	}
}

// Recv returns the next event; io.EOF when the watch has ended normally.
// A single-task watch whose stream breaks (see the package comment for
// which errors) is opened again after the last revision it delivered:
// the server replays what was missed, or sends a RESYNC with the current
// task when it no longer has it. The attempts are counted from the last
// event delivered.
func (w *Watcher) Recv() (*vowv1.WatchResponse, error) {
	for {
		event, err := w.stream.Recv()
		switch {
		case err == nil && event.GetType() == vowv1.WatchEventType_WATCH_EVENT_TYPE_HEARTBEAT:
			continue
		case err == nil:
			if w.request.Id != "" {
				w.request.AfterRevision = event.GetTask().GetRevision()
			}
			w.backoff.reset()
			return event, nil
		case err == io.EOF:
			w.cancel()
			return nil, io.EOF
		case w.request.Id != "" && w.backoff.wait(w.ctx, err, repeatSafe):
			if openErr := w.open(); openErr != nil {
				w.cancel()
				return nil, openErr
			}
		default:
			w.cancel()
			return nil, err
		}
	}
}

// Close ends the watch early.
func (w *Watcher) Close() { w.cancel() }
