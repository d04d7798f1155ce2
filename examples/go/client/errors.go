package client

import (
	vowv1 "example.com/vowgen/vow/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorInfo returns the google.rpc.ErrorInfo of a gRPC error (vowd attaches
// one to every error, with a stable Reason and the trace_id in Metadata), or
// nil when err carries none.
func ErrorInfo(err error) *errdetails.ErrorInfo {
	for _, detail := range status.Convert(err).Details() {
		if info, ok := detail.(*errdetails.ErrorInfo); ok {
			return info
		}
	}
	return nil
}

// TaskError returns why a task FAILED or was CANCELLED as a gRPC status
// error, so status.Code, status.Convert and ErrorInfo read it like an RPC
// error. It is nil for a task that has not failed.
func TaskError(task *vowv1.Task) error {
	if task.GetError() != nil {
		state := task.GetState()
		if state == vowv1.TaskState_TASK_STATE_FAILED || state == vowv1.TaskState_TASK_STATE_CANCELLED {
			return status.ErrorProto(task.GetError())
		}
	}
	switch task.GetState() {
	case vowv1.TaskState_TASK_STATE_FAILED:
		return status.Errorf(codes.Unknown, "task %s failed", task.GetId())
	case vowv1.TaskState_TASK_STATE_CANCELLED:
		return status.Errorf(codes.Canceled, "task %s was cancelled", task.GetId())
	}
	return nil
}

// IsTerminal reports whether a task has finished: SUCCEEDED, FAILED or CANCELLED.
func IsTerminal(task *vowv1.Task) bool {
	switch task.GetState() {
	case vowv1.TaskState_TASK_STATE_SUCCEEDED, vowv1.TaskState_TASK_STATE_FAILED, vowv1.TaskState_TASK_STATE_CANCELLED:
		return true
	}
	return false
}
