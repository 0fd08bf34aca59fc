package testutil

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The programs StartRedis runs, found on PATH: the server, and the same
// program as Debian's redis-sentinel package installs it, for sentinels.
const (
	redisServer   = "redis-server"
	redisSentinel = "redis-sentinel"
)

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
	c    RedisConfig
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

// RedisConfig asks StartRedisWith for more than a plain server.
type RedisConfig struct {
	// Args are more redis-server arguments: --requirepass PASSWORD,
	// --user NAME on >PASSWORD ~* +@all, --replicaof HOST PORT...
	Args []string
	// Password, when set, is sent with AUTH (of the default user) before
	// the PING that tells the server is up.
	Password string
	// TLS, when set, makes the server serve TLS only, with the server
	// certificate of TLS, asking clients for a certificate that TLS's
	// authority signs; the PING then uses TLS.Client.
	TLS *Certs
	// Sentinel, when set, runs redis-sentinel instead, with this
	// configuration (sentinel monitor ...); the port is added to it.
	Sentinel string
}

// StartRedis starts a redis-server on a free loopback port and waits until
// it answers PING; t's Cleanup stops it. Without redis-server on PATH it
// skips the test, unless the environment has CI=true: CI must run every
// test that proves Redis works, so there a missing server fails the test.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	return StartRedisWith(t, RedisConfig{})
}

// StartRedisWith starts a redis-server, or a redis-sentinel, configured as
// c says, as StartRedis does.
func StartRedisWith(t testing.TB, c RedisConfig) *Redis {
	t.Helper()
	program := redisServer
	if c.Sentinel != "" {
		program = redisSentinel
	}
	path, err := exec.LookPath(program)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and %s is not installed: %v", program, err)
		} else {
			t.Skipf("%s is not installed; this test needs it (and fails without it under CI=true)", program)
		}
		return nil
	}
	r := &Redis{t: t, c: c, path: path, dir: t.TempDir()}
	t.Cleanup(r.Stop)
	// A port found free can be taken before redis-server binds it.
	for attempt := 1; ; attempt++ {
		r.Addr = FreeAddr(t)
		err := r.start()
		if err == nil {
			return r
		}
		if attempt == 3 {
			t.Fatalf("start %s: %v", program, err)
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

// Pause stops the server's process (SIGSTOP) and leaves its connections
// open: they take commands and answer none, as a server stalled by a slow
// command, by swapping or in a frozen VM would. Resume continues it, and
// it answers what it was sent meanwhile. Stop ends a paused server too.
func (r *Redis) Pause() { r.signal(syscall.SIGSTOP) }

// Resume continues a server that Pause stopped.
func (r *Redis) Resume() { r.signal(syscall.SIGCONT) }

// signal sends sig to the running server; it fails the test if none runs.
func (r *Redis) signal(sig syscall.Signal) {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil {
		r.t.Fatalf("%s on %s: not running", sig, r.Addr)
		return
	}
	if err := r.proc.cmd.Process.Signal(sig); err != nil {
		r.t.Fatalf("%s on %s: %v", sig, r.Addr, err)
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
	args, err := r.args()
	if err != nil {
		return err
	}
	cmd := exec.Command(r.path, args...)
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
	if err := waitPing(r.Addr, p.done, r.c); err != nil {
		p.kill()
		return fmt.Errorf("%w; its log:\n%s", err, out)
	}
	r.proc = p
	return nil
}

// args returns the command line of the program.
func (r *Redis) args() ([]string, error) {
	_, port, err := net.SplitHostPort(r.Addr)
	if err != nil {
		return nil, fmt.Errorf("address %q: %w", r.Addr, err)
	}
	args := []string{"--bind", "127.0.0.1", "--dir", r.dir, "--logfile", "", "--daemonize", "no"}
	if t := r.c.TLS; t != nil {
		args = append(args, "--port", "0", "--tls-port", port,
			"--tls-cert-file", t.ServerCert, "--tls-key-file", t.ServerKey, "--tls-ca-cert-file", t.CA,
			"--tls-auth-clients", "yes")
	} else {
		args = append(args, "--port", port)
	}
	if r.c.Sentinel != "" {
		// A sentinel rewrites its file as it learns the topology; a
		// restart starts from what it wrote.
		conf := filepath.Join(r.dir, "sentinel.conf")
		if _, err := os.Stat(conf); errors.Is(err, fs.ErrNotExist) {
			if err := os.WriteFile(conf, []byte(r.c.Sentinel+"\n"), 0o600); err != nil {
				return nil, err
			}
		}
		return append([]string{conf}, args...), nil
	}
	// No snapshots, no append-only file: nothing survives a stop.
	args = append(args, "--save", "", "--appendonly", "no")
	return append(args, r.c.Args...), nil
}

func (p *redisProcess) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// waitPing polls addr with PING, as c says to reach it, until it answers
// PONG, the process exits (done is closed) or redisStartTimeout passes.
func waitPing(addr string, done <-chan struct{}, c RedisConfig) error {
	var err error
	exited := false
	answered := poll(redisStartTimeout, func() bool {
		select {
		case <-done:
			exited = true
			return true
		default:
		}
		err = ping(addr, c)
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

// ping sends one PING in the Redis protocol, after AUTH if c has a
// password, and checks the answers.
func ping(addr string, c RedisConfig) error {
	d := &net.Dialer{Timeout: time.Second}
	var conn net.Conn
	var err error
	if c.TLS != nil {
		conn, err = tls.DialWithDialer(d, "tcp", addr, c.TLS.Client)
	} else {
		conn, err = d.Dial("tcp", addr)
	}
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(time.Second)); err != nil {
		return err
	}
	br := bufio.NewReader(conn)
	if c.Password != "" {
		if err := command(conn, br, "+OK\r\n", "AUTH", c.Password); err != nil {
			return err
		}
	}
	return command(conn, br, "+PONG\r\n", "PING")
}

// command sends args as a Redis command and checks that the answer is want.
func command(w io.Writer, br *bufio.Reader, want string, args ...string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return err
	}
	line, err := br.ReadString('\n')
	if err != nil {
		return err
	}
	if line != want {
		return fmt.Errorf("%s answered %q", args[0], line)
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
