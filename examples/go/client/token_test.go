package client_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"example.com/vow/client"
	"example.com/vow/internal/vowdtest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A key made by `vowd keys new` lets the Go client in, into its namespace;
// without it vowd answers UNAUTHENTICATED.
func TestTokenOfAnAuthFile(t *testing.T) {
	binary := os.Getenv("VOWD")
	if binary == "" {
		binary = vowdtest.DefaultBinary
	}
	made, err := exec.Command(binary, "keys", "new", "--namespace", "go-team",
		"--permissions", "submit,read", "--name", "go-test").Output()
	if err != nil {
		t.Fatalf("vowd keys new: %v", err)
	}
	key, entry, _ := strings.Cut(string(made), "\n")
	authFile := filepath.Join(t.TempDir(), "auth.toml")
	if err := os.WriteFile(authFile, []byte(entry), 0o600); err != nil {
		t.Fatal(err)
	}
	server := vowdtest.Start(t, nil, "--auth-file", authFile)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	if _, err := client.New(server.Conn).Submit(ctx, "echo", "anonymous"); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("without a token: %v, want UNAUTHENTICATED", err)
	}
	vow, err := client.Dial(ctx, server.Addr, grpc.WithInsecure(), client.WithToken(key, true))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer vow.Close()
	task, err := vow.Submit(ctx, "echo", "with a key")
	if err != nil {
		t.Fatalf("submit with a token: %v", err)
	}
	if task.GetNamespace() != "go-team" {
		t.Fatalf("namespace %q, want go-team", task.GetNamespace())
	}
}
