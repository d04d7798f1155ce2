package worker

import (
	"sync"

	"example.com/vow/client"
	vowv1 "example.com/vowgen/vow/v1"
)

// Task is one leased attempt of a task, as its handler sees it. The
// handler's context carries the rest: its deadline is the attempt deadline,
// and it is done when the task is cancelled or the lease is lost.
type Task struct {
	// ID is the task's id.
	ID string
	// Kind is the kind the handler was registered for.
	Kind string
	// Attempt numbers this attempt, from 1.
	Attempt uint32
	// MaxAttempts is how many attempts the task may have in all.
	MaxAttempts uint32
	// Labels are the labels given at submit.
	Labels map[string]string
	// Input is what the submitter passed in; Decode reads it.
	Input *vowv1.Payload
	// Traceparent and Tracestate are the W3C trace context of the
	// attempt's span: start the handler's spans under it to join the
	// submitter's trace.
	Traceparent string
	Tracestate  string

	progress *progress
}

// Decode stores the task's input in the value v points to, as
// client.DecodePayload does (JSON into any type, binary into a *[]byte).
func (t *Task) Decode(v any) error { return client.DecodePayload(t.Input, v) }

// ReportProgress records how far the handler got; the next heartbeat
// carries the latest report to the server (reports in between are
// coalesced), where Get and Watch show it.
func (t *Task) ReportProgress(percent float32, message string) {
	t.progress.set(&vowv1.Progress{Percent: percent, Message: message})
}

// progress holds the latest report between heartbeats; the handler writes
// it from its goroutine, the attempt's heartbeat loop reads it.
type progress struct {
	mu     sync.Mutex
	latest *vowv1.Progress
}

// A nil progress (a Task built by hand, in a handler's unit test) drops reports.
func (p *progress) set(report *vowv1.Progress) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.latest = report
}

func (p *progress) get() *vowv1.Progress {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.latest
}
