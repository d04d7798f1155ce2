package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"example.com/vow/internal/vowdtest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestSubmitAwaitsTheOutput(t *testing.T) {
	server := vowdtest.Start(t, nil)
	var stdout bytes.Buffer
	err := run(context.Background(), []string{"-server", server.Addr, "-input", `{"hello": "world"}`}, &stdout)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if !strings.Contains(stdout.String(), `TASK_STATE_SUCCEEDED {"hello":"world"}`) {
		t.Errorf("stdout = %q, want the echoed input", stdout.String())
	}
}

func TestSubmitWatchesUntilCancelled(t *testing.T) {
	server := vowdtest.Start(t, nil)
	var stdout bytes.Buffer
	started := time.Now()
	err := run(context.Background(), []string{
		"-server", server.Addr, "-kind", "sleep", "-input", `{"ms": 60000}`,
		"-watch", "-cancel-after", "200ms",
	}, &stdout)
	if status.Code(err) != codes.Canceled {
		t.Fatalf("run: %v, want the task's CANCELLED error", err)
	}
	if elapsed := time.Since(started); elapsed > 5*time.Second {
		t.Errorf("the cancel took %v to end the watch", elapsed)
	}
	if !strings.Contains(stdout.String(), "TASK_STATE_CANCELLED") {
		t.Errorf("stdout = %q, want the cancelled change", stdout.String())
	}
}

func TestSubmitLoadsTheServiceConfig(t *testing.T) {
	server := vowdtest.Start(t, nil)
	var stdout bytes.Buffer
	config := filepath.Join("..", "..", "..", "..", "deploy", "grpc-service-config.json")
	if wd, err := os.Getwd(); err == nil {
		// test.sh runs the tests through a GOPATH symlink to examples/go.
		if real, err := filepath.EvalSymlinks(wd); err == nil {
			config = filepath.Join(real, config)
		}
	}
	err := run(context.Background(), []string{"-server", server.Addr, "-service-config", config}, &stdout)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	err = run(context.Background(), []string{"-server", server.Addr, "-service-config", filepath.Join(t.TempDir(), "missing.json")}, &stdout)
	if err == nil {
		t.Fatal("run with a missing service config: no error")
	}
}
