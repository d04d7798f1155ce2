package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	protov1 "github.com/golang/protobuf/proto"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// errorDomain is the ErrorInfo domain of errors raised by handlers, as the
// Rust worker sets it: "vow" is the server's own.
const errorDomain = "vow.worker"

// Error is a handler error whose code decides what happens next: the server
// retries UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED and
// INTERNAL, and ends the task on INVALID_ARGUMENT, FAILED_PRECONDITION,
// NOT_FOUND, PERMISSION_DENIED, UNIMPLEMENTED and CANCELLED.
type Error struct {
	// Code is the gRPC code of the failure.
	Code codes.Code
	// Message is for people; it becomes the task's error message.
	Message string
	// Reason is the ErrorInfo reason, a stable UPPER_SNAKE_CASE identifier
	// (a retry policy's non_retryable_reasons name these); the code's name
	// when empty.
	Reason string
	// Metadata is the ErrorInfo metadata.
	Metadata map[string]string
	// RetryDelay, when positive, asks for the next attempt after this long
	// instead of after the retry policy's backoff (a google.rpc.RetryInfo).
	RetryDelay time.Duration

	cause error
}

// Errorf returns an Error with code and a formatted message; a %w verb
// makes the wrapped error reachable by errors.Is and errors.As.
func Errorf(code codes.Code, format string, args ...any) *Error {
	formatted := fmt.Errorf(format, args...)
	return &Error{Code: code, Message: formatted.Error(), cause: errors.Unwrap(formatted)}
}

// WithReason sets the ErrorInfo reason.
func (e *Error) WithReason(reason string) *Error {
	e.Reason = reason
	return e
}

// WithMetadata adds one ErrorInfo metadata entry.
func (e *Error) WithMetadata(key, value string) *Error {
	if e.Metadata == nil {
		e.Metadata = map[string]string{}
	}
	e.Metadata[key] = value
	return e
}

// WithRetryDelay asks for the next attempt after delay.
func (e *Error) WithRetryDelay(delay time.Duration) *Error {
	e.RetryDelay = delay
	return e
}

func (e *Error) Error() string { return codeName(e.Code) + ": " + e.Message }

// Unwrap returns the error wrapped with %w, if any.
func (e *Error) Unwrap() error { return e.cause }

// proto is the google.rpc.Status a Complete carries: the code, the message,
// an ErrorInfo and, with a delay, a RetryInfo.
func (e *Error) proto() *spb.Status {
	code := e.Code
	if code == codes.OK {
		// OK is no failure; a handler that says so with an error is confused.
		code = codes.Unknown
	}
	reason := e.Reason
	if reason == "" {
		reason = codeName(code)
	}
	// APIv1 messages: what grpc 1.33's status.WithDetails takes, and what
	// Debian's errdetails types are.
	details := []protov1.Message{&errdetails.ErrorInfo{Reason: reason, Domain: errorDomain, Metadata: e.Metadata}}
	if e.RetryDelay > 0 {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(e.RetryDelay)})
	}
	st := status.New(code, e.Message)
	withDetails, err := st.WithDetails(details...)
	if err != nil {
		// It fails only for code OK or a detail that cannot be marshalled,
		// neither of which can happen here.
		return st.Proto()
	}
	return withDetails.Proto()
}

// errorOf turns whatever a handler returned into an Error: an *Error as it
// is, a gRPC status error (from a call the handler made) with its code, a
// context error as DEADLINE_EXCEEDED or CANCELLED, anything else UNKNOWN.
func errorOf(err error) *Error {
	var handlerError *Error
	if errors.As(err, &handlerError) {
		return handlerError
	}
	if st, ok := status.FromError(err); ok {
		return &Error{Code: st.Code(), Message: st.Message(), cause: err}
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{Code: codes.DeadlineExceeded, Message: err.Error(), cause: err}
	case errors.Is(err, context.Canceled):
		return &Error{Code: codes.Canceled, Message: err.Error(), cause: err}
	}
	return &Error{Code: codes.Unknown, Message: err.Error(), cause: err}
}

// codeNames are the canonical names every gRPC implementation shares;
// codes.Code.String says "Unavailable" where the wire and ErrorInfo
// reasons say "UNAVAILABLE".
var codeNames = map[codes.Code]string{
	codes.OK:                 "OK",
	codes.Canceled:           "CANCELLED",
	codes.Unknown:            "UNKNOWN",
	codes.InvalidArgument:    "INVALID_ARGUMENT",
	codes.DeadlineExceeded:   "DEADLINE_EXCEEDED",
	codes.NotFound:           "NOT_FOUND",
	codes.AlreadyExists:      "ALREADY_EXISTS",
	codes.PermissionDenied:   "PERMISSION_DENIED",
	codes.ResourceExhausted:  "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION",
	codes.Aborted:            "ABORTED",
	codes.OutOfRange:         "OUT_OF_RANGE",
	codes.Unimplemented:      "UNIMPLEMENTED",
	codes.Internal:           "INTERNAL",
	codes.Unavailable:        "UNAVAILABLE",
	codes.DataLoss:           "DATA_LOSS",
	codes.Unauthenticated:    "UNAUTHENTICATED",
}

func codeName(code codes.Code) string {
	if name, ok := codeNames[code]; ok {
		return name
	}
	return fmt.Sprintf("CODE_%d", uint32(code))
}
