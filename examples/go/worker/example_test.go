package worker_test

import (
	"context"
	"log"
	"os"
	"os/signal"
	"syscall"

	"example.com/vow/worker"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// Serve a remote kind until SIGTERM, then drain and hand unfinished leases back.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	conn, err := grpc.DialContext(ctx, "127.0.0.1:50051", grpc.WithInsecure())
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	w := worker.New(conn, worker.WithConcurrency(8))
	w.Handle("resize", func(ctx context.Context, task *worker.Task) (any, error) {
		var image struct{ URL string }
		if err := task.Decode(&image); err != nil || image.URL == "" {
			return nil, worker.Errorf(codes.InvalidArgument, "want {\"url\": ...}").WithReason("BAD_IMAGE")
		}
		task.ReportProgress(50, "resizing")
		select { // real work stops when ctx is done: cancelled, past the deadline, lease lost
		case <-ctx.Done():
			return nil, ctx.Err()
		default:
		}
		return map[string]string{"thumbnail": image.URL + "?w=128"}, nil
	})
	if err := w.Run(ctx); err != nil {
		log.Fatal(err)
	}
}
