package client_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"example.com/vow/client"
	"example.com/vow/internal/vowdtest"
	vowv1 "example.com/vowgen/vow/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"
)

// With the shipped service config (waitForReady), a call made while the
// channel cannot connect waits for vowd to come back instead of failing.
func TestServiceConfigWaitsForReady(t *testing.T) {
	first := vowdtest.Start(t, nil)
	addr := first.Addr
	first.Terminate(t)

	opts, err := client.ServiceConfig(serviceConfigPath(t))
	if err != nil {
		t.Fatal(err)
	}
	vow := dialRestartable(t, addr, opts...)
	vowdtest.Eventually(t, testTimeout, "the channel to fail to connect", func() bool {
		return vow.Conn().(*grpc.ClientConn).GetState() == connectivity.TransientFailure
	})
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	got := make(chan error, 1)
	go func() {
		// The bare stub: no retry of the client's in the way.
		_, err := vow.Tasks().Get(ctx, &vowv1.GetRequest{Id: "0123456789abcdef0123456789abcdef"})
		got <- err
	}()
	vowdtest.StartConfig(t, vowdtest.Config{Listen: addr})
	if err := <-got; status.Code(err) != codes.NotFound {
		t.Fatalf("get: %v, want vowd's NOT_FOUND once it is back", err)
	}
}

// serviceConfigPath is deploy/grpc-service-config.json of this repository.
func serviceConfigPath(t *testing.T) string {
	t.Helper()
	// The tests run in examples/go/client, through test.sh's GOPATH symlink.
	wd, err := os.Getwd()
	if err == nil {
		wd, err = filepath.EvalSymlinks(wd)
	}
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(wd, "..", "..", "..", "deploy", "grpc-service-config.json")
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the service config: %v", err)
	}
	return path
}
