package testutil

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"
)

// redisServer is the program StartRedis runs, found on PATH.
const redisServer = "redis-server"

// redisStartTimeout bounds how long a redis-server may take to answer PING.
const redisStartTimeout = 10 * time.Second

// Redis is a real redis-server of one test, on a loopback port of its own,
// that persists nothing: stopped and started again, it is empty, as a Redis
// without persistence is after a crash.
type Redis struct {
	// Addr is the host:port the server listens on; a Start after Stop
	// keeps it, so clients configured with it reconnect.
	Addr string

	t    testing.TB
	path string // of the redis-server program
	dir  string // its working directory, where it would write if it wrote

	mu   sync.Mutex
	proc *redisProcess // nil while stopped
}

// redisProcess is one run of redis-server.
type redisProcess struct {
	cmd  *exec.Cmd
	out  *LockedBuffer // its log, for failure messages
	done chan struct{} // closed once it has exited
}

// StartRedis starts a redis-server on a free loopback port and waits until
// it answers PING; t's Cleanup stops it. Without redis-server on PATH it
// skips the test, unless the environment has CI=true: CI must run every
// test that proves Redis works, so there a missing server fails the test.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	path, err := exec.LookPath(redisServer)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and %s is not installed: %v", redisServer, err)
		} else {
			t.Skipf("%s is not installed; this test needs it (and fails without it under CI=true)", redisServer)
		}
		return nil
	}
	r := &Redis{t: t, path: path, dir: t.TempDir()}
	t.Cleanup(r.Stop)
	// A port found free can be taken before redis-server binds it.
	for attempt := 1; ; attempt++ {
		r.Addr = FreeAddr(t)
		err := r.start()
		if err == nil {
			return r
		}
		if attempt == 3 {
			t.Fatalf("start %s: %v", redisServer, err)
			return nil
		}
	}
}

// Stop kills the server at once, like a crash, and waits for it to exit.
// Stopping a stopped server does nothing.
func (r *Redis) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc != nil {
		r.proc.kill()
		r.proc = nil
	}
}

// Start starts the server again, empty, on the same Addr, and waits until
// it answers PING. It fails the test if the server is running or does not
// start.
func (r *Redis) Start() {
	r.t.Helper()
	if err := r.start(); err != nil {
		r.t.Fatalf("restart %s on %s: %v", redisServer, r.Addr, err)
	}
}

func (r *Redis) start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc != nil {
		return errors.New("already running")
	}
	_, port, err := net.SplitHostPort(r.Addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", r.Addr, err)
	}
	cmd := exec.Command(r.path,
		"--bind", "127.0.0.1", "--port", port,
		// No snapshots, no append-only file: nothing survives a stop.
		"--save", "", "--appendonly", "no",
		"--dir", r.dir, "--logfile", "", "--daemonize", "no")
	out := new(LockedBuffer)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run %s: %w", r.path, err)
	}
	p := &redisProcess{cmd: cmd, out: out, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	if err := waitPing(r.Addr, p.done); err != nil {
		p.kill()
		return fmt.Errorf("%w; its log:\n%s", err, out)
	}
	r.proc = p
	return nil
}

func (p *redisProcess) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// waitPing polls addr with PING until it answers PONG, the process exits
// (done is closed) or redisStartTimeout passes.
func waitPing(addr string, done <-chan struct{}) error {
	var err error
	exited := false
	answered := poll(redisStartTimeout, func() bool {
		select {
		case <-done:
			exited = true
			return true
		default:
		}
		err = ping(addr)
		return err == nil
	})
	switch {
	case exited:
		return errors.New("redis-server exited before answering PING")
	case !answered:
		return fmt.Errorf("no PONG from %s within %v: %w", addr, redisStartTimeout, err)
	}
	return nil
}

// ping sends one PING in the Redis protocol and checks the answer.
func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(time.Second)); err != nil {
		return err
	}
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

// LockedBuffer is a bytes.Buffer that a process writes while a test reads:
// a child process's output, shown when a test fails.
type LockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *LockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
