// Package vowdtest starts the real vowd binary for end-to-end tests: the Go
// packages are tested against the server users run, not a fake of it.
package vowdtest

import (
	"bufio"
	"bytes"
	"context"
	"net/http"
	"os"
	"os/exec"
	"strconv"
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

// metricsPrefix starts the line vowd prints, before the listening one,
// once its metrics endpoint is up.
const metricsPrefix = "vowd metrics on "

// stopTimeout bounds a stop: vowd's drain here is 100 ms, and a vowd that
// does not exit well within this is hung.
const stopTimeout = 10 * time.Second

// Server is one vowd process on an ephemeral port, stopped when its test ends.
type Server struct {
	// Addr is the HOST:PORT vowd listens on.
	Addr string
	// MetricsAddr is the HOST:PORT of its Prometheus endpoint (Metric).
	MetricsAddr string
	// Conn is a connection to Addr, closed when the test ends.
	Conn *grpc.ClientConn

	cmd    *exec.Cmd
	stderr *lockedBuffer
	exited chan struct{}
}

// LeaseDuration is the lease vowd grants by default in tests, so workers
// heartbeat every second (a third of it).
const LeaseDuration = 3 * time.Second

// Start runs vowd with the memory store, the given remote kinds, leases of
// LeaseDuration and a short drain on SIGTERM, plus any extra flags. It
// fails the test if vowd does not report its address in time.
func Start(t testing.TB, remoteKinds []string, extraFlags ...string) *Server {
	t.Helper()
	return StartConfig(t, Config{RemoteKinds: remoteKinds, Flags: extraFlags})
}

// Config says how StartConfig runs vowd.
type Config struct {
	// Listen is the HOST:PORT to listen on (default 127.0.0.1:0, a free
	// port). A vowd restarted on its predecessor's Addr is what clients
	// connected straight to one vowd see of a restart.
	Listen string
	// DataDir, when set, runs the embedded store there instead of the
	// memory store: tasks survive a restart with the same DataDir.
	DataDir string
	// RemoteKinds are declared with --remote-kind.
	RemoteKinds []string
	// Flags come last, after those of Start.
	Flags []string
}

// StartConfig runs vowd as Start does, with config's address, store and
// flags, and its metrics on a port of their own (MetricsAddr).
func StartConfig(t testing.TB, config Config) *Server {
	t.Helper()
	binary := os.Getenv("VOWD")
	if binary == "" {
		binary = DefaultBinary
	}
	listen := config.Listen
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	args := []string{"--listen", listen, "--metrics-listen", "127.0.0.1:0",
		"--lease-duration", LeaseDuration.String(), "--drain-timeout", "100ms"}
	if config.DataDir != "" {
		args = append(args, "--store", "embedded", "--data-dir", config.DataDir)
	} else {
		args = append(args, "--store", "memory")
	}
	for _, kind := range config.RemoteKinds {
		args = append(args, "--remote-kind", kind)
	}
	args = append(args, config.Flags...)

	cmd := exec.Command(binary, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("vowd stdout: %v", err)
	}
	server := &Server{cmd: cmd, stderr: &lockedBuffer{}, exited: make(chan struct{})}
	cmd.Stderr = server.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s (set VOWD to a vowd binary): %v", binary, err)
	}
	go func() {
		_ = cmd.Wait()
		close(server.exited)
	}()
	t.Cleanup(server.stop)

	// Closed without an address when vowd exits first (a bad flag, say).
	addrs := make(chan string, 1)
	go func() {
		scanner := bufio.NewScanner(stdout)
		for scanner.Scan() {
			line := scanner.Text()
			if strings.HasPrefix(line, metricsPrefix) {
				server.MetricsAddr = strings.TrimPrefix(line, metricsPrefix)
			}
			if strings.HasPrefix(line, listeningPrefix) {
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
	select {
	case <-s.exited:
	case <-time.After(2 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// Terminate sends SIGTERM, as an orchestrator stopping a replica does, and
// waits until vowd has drained and exited with status 0: its address and
// data directory are then free for a successor. It leaves Conn open.
func (s *Server) Terminate(t testing.TB) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM vowd: %v", err)
	}
	select {
	case <-s.exited:
	case <-time.After(stopTimeout):
		_ = s.cmd.Process.Kill()
		<-s.exited
		t.Fatalf("vowd did not exit within %v of SIGTERM; stderr:\n%s", stopTimeout, s.Logs())
	}
	if code := s.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("vowd exited %d after SIGTERM; stderr:\n%s", code, s.Logs())
	}
}

// Metric returns the sum of the series in vowd's /metrics that series
// names (0 when there is none): a metric's name (vow_live_waiters), or the
// start of a series with its first labels
// (vow_rpc_requests_total{method="Get").
func (s *Server) Metric(t testing.TB, series string) float64 {
	t.Helper()
	response, err := http.Get("http://" + s.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatalf("scrape vowd's metrics: %v", err)
	}
	defer response.Body.Close()
	var sum float64
	scanner := bufio.NewScanner(response.Body)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) < 2 {
			continue
		}
		if fields[0] != series && !strings.HasPrefix(fields[0], series+"{") &&
			!(strings.Contains(series, "{") && strings.HasPrefix(fields[0], series)) {
			continue
		}
		value, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", scanner.Text(), err)
		}
		sum += value
	}
	if err := scanner.Err(); err != nil {
		t.Fatalf("read vowd's metrics: %v", err)
	}
	return sum
}

// Eventually polls condition every 10 ms until it holds, and fails the
// test if it does not within timeout.
func Eventually(t testing.TB, timeout time.Duration, what string, condition func() bool) {
	t.Helper()
	giveUp := time.Now().Add(timeout)
	for !condition() {
		if time.Now().After(giveUp) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
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
