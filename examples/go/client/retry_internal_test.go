package client

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestMayRepeat(t *testing.T) {
	live := context.Background()
	cancelled, cancel := context.WithCancel(live)
	cancel()
	cases := []struct {
		name string
		ctx  context.Context
		err  error
		rule repeat
		want bool
	}{
		{"unavailable", live, status.Error(codes.Unavailable, "draining"), repeatSafe, true},
		{"unavailable, run", live, status.Error(codes.Unavailable, "draining"), repeatIfUnserved, true},
		{"a proxy's cancelled", live, status.Error(codes.Canceled, "stream reset"), repeatSafe, true},
		{"a proxy's cancelled, run", live, status.Error(codes.Canceled, "stream reset"), repeatIfUnserved, false},
		{"internal", live, status.Error(codes.Internal, "stream reset"), repeatSafe, true},
		{"unknown", live, status.Error(codes.Unknown, "broken"), repeatSafe, true},
		{"unknown, run", live, status.Error(codes.Unknown, "broken"), repeatIfUnserved, false},
		{"the caller's cancel", cancelled, status.Error(codes.Canceled, "context canceled"), repeatSafe, false},
		{"the caller's cancel, even as unavailable", cancelled, status.Error(codes.Unavailable, "x"), repeatSafe, false},
		{"not found", live, status.Error(codes.NotFound, "no task"), repeatSafe, false},
		{"invalid argument", live, status.Error(codes.InvalidArgument, "bad"), repeatSafe, false},
		{"deadline exceeded", live, status.Error(codes.DeadlineExceeded, "late"), repeatSafe, false},
		{"not a status", live, errors.New("encode payload"), repeatSafe, false},
		{"success", live, nil, repeatSafe, false},
	}
	for _, c := range cases {
		if got := mayRepeat(c.ctx, c.err, c.rule); got != c.want {
			t.Errorf("%s: mayRepeat = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestBackoffStopsAtTheAttemptBound(t *testing.T) {
	calls := 0
	err := retry(context.Background(), repeatSafe, func(context.Context) error {
		calls++
		// RetryInfo of 1 ms keeps the test fast; it replaces the jitter.
		return retryAfter(codes.Unavailable, time.Millisecond)
	})
	if status.Code(err) != codes.Unavailable || calls != retryAttempts {
		t.Fatalf("%d calls ending with %v, want %d ending UNAVAILABLE", calls, err, retryAttempts)
	}
}

func TestBackoffNeverPausesPastTheDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	calls := 0
	started := time.Now()
	err := retry(ctx, repeatSafe, func(context.Context) error {
		calls++
		return retryAfter(codes.Unavailable, time.Second)
	})
	if calls != 1 || status.Code(err) != codes.Unavailable {
		t.Fatalf("%d calls ending with %v, want the first call's UNAVAILABLE", calls, err)
	}
	if elapsed := time.Since(started); elapsed > 100*time.Millisecond {
		t.Errorf("gave up after %v, want at once: the pause would end past the deadline", elapsed)
	}
}

func TestJitterStaysUnderTheCeiling(t *testing.T) {
	for i := 0; i < 1000; i++ {
		if pause := jitter(retryInitialBackoff); pause < 0 || pause > retryInitialBackoff {
			t.Fatalf("jitter = %v, want 0 to %v", pause, retryInitialBackoff)
		}
	}
}

func retryAfter(code codes.Code, delay time.Duration) error {
	withDetails, err := status.New(code, "come back later").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(delay)})
	if err != nil {
		panic(err)
	}
	return withDetails.Err()
}
