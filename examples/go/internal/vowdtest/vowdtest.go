// Package vowdtest starts the real vowd binary for end-to-end tests: the Go
// packages are tested against the server users run, not a fake of it.
package vowdtest

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
)

// DefaultBinary is used when the VOWD variable names no binary (test.sh
// always sets it): a vowd on the PATH.
const DefaultBinary = "vowd"

// startTimeout bounds the wait for the "listening" line; vowd with the
// memory store starts in milliseconds, so hitting it means it is broken.
const startTimeout = 10 * time.Second

// listeningPrefix starts the line vowd prints on stdout once it accepts calls.
const listeningPrefix = "vowd listening on "

// Server is one vowd process on an ephemeral port, stopped when its test ends.
type Server struct {
	// Addr is the HOST:PORT vowd listens on.
	Addr string
	// Conn is a connection to Addr, closed when the test ends.
	Conn *grpc.ClientConn

	cmd    *exec.Cmd
	stderr *lockedBuffer
}

// LeaseDuration is the lease vowd grants by default in tests, so workers
// heartbeat every second (a third of it).
const LeaseDuration = 3 * time.Second

// Start runs vowd with the memory store, the given remote kinds, leases of
// LeaseDuration and a short drain on SIGTERM, plus any extra flags. It
// fails the test if vowd does not report its address in time.
func Start(t testing.TB, remoteKinds []string, extraFlags ...string) *Server {
	t.Helper()
	binary := os.Getenv("VOWD")
	if binary == "" {
		binary = DefaultBinary
	}
	args := []string{
		"--listen", "127.0.0.1:0", "--store", "memory",
		"--lease-duration", LeaseDuration.String(), "--drain-timeout", "100ms",
	}
	for _, kind := range remoteKinds {
		args = append(args, "--remote-kind", kind)
	}
	args = append(args, extraFlags...)

	cmd := exec.Command(binary, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("vowd stdout: %v", err)
	}
	server := &Server{cmd: cmd, stderr: &lockedBuffer{}}
	cmd.Stderr = server.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s (set VOWD to a vowd binary): %v", binary, err)
	}
	t.Cleanup(server.stop)

	// Closed without an address when vowd exits first (a bad flag, say).
	addrs := make(chan string, 1)
	go func() {
		scanner := bufio.NewScanner(stdout)
		for scanner.Scan() {
			if line := scanner.Text(); strings.HasPrefix(line, listeningPrefix) {
				addrs <- strings.TrimPrefix(line, listeningPrefix)
				break
			}
		}
		close(addrs)
		// Keep draining so vowd never blocks on a full stdout pipe.
		for scanner.Scan() {
		}
	}()
	select {
	case addr, ok := <-addrs:
		if !ok {
			t.Fatalf("vowd exited before reporting its address; stderr:\n%s", server.stderr)
		}
		server.Addr = addr
	case <-time.After(startTimeout):
		t.Fatalf("vowd did not report its address within %v; stderr:\n%s", startTimeout, server.stderr)
	}

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	server.Conn, err = grpc.DialContext(ctx, server.Addr, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		t.Fatalf("dial vowd at %s: %v", server.Addr, err)
	}
	return server
}

// Logs returns what vowd has written to stderr so far, for failure messages.
func (s *Server) Logs() string { return s.stderr.String() }

func (s *Server) stop() {
	if s.Conn != nil {
		s.Conn.Close()
	}
	// SIGTERM first so vowd exits the way it does in production; a test
	// never waits on a graceful drain, so it is killed if it lingers.
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan struct{})
	go func() {
		_ = s.cmd.Wait()
		close(exited)
	}()
	select {
	case <-exited:
	case <-time.After(2 * time.Second):
		_ = s.cmd.Process.Kill()
		<-exited
	}
}

// lockedBuffer lets the test read vowd's stderr while exec copies into it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
