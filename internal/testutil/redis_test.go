package testutil

import (
	"bufio"
	"crypto/tls"
	"net"
	"testing"
	"time"
)

// redisCommand sends one inline command to the Redis at addr and returns
// the first line of its answer.
func redisCommand(t *testing.T, addr, cmd string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte(cmd + "\r\n")); err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	return line
}

func TestRedisStopsAndRestartsEmpty(t *testing.T) {
	r := StartRedis(t)
	if got := redisCommand(t, r.Addr, "SET k v"); got != "+OK\r\n" {
		t.Fatalf("SET answered %q", got)
	}
	if got := redisCommand(t, r.Addr, "GET k"); got != "$1\r\n" {
		t.Fatalf("GET answered %q, want the value", got)
	}

	r.Stop()
	if c, err := net.DialTimeout("tcp", r.Addr, time.Second); err == nil {
		_ = c.Close()
		t.Fatalf("%s accepts connections after Stop", r.Addr)
	}
	r.Stop() // a second Stop is harmless

	addr := r.Addr
	r.Start()
	if r.Addr != addr {
		t.Errorf("restarted on %s, want %s", r.Addr, addr)
	}
	if got := redisCommand(t, r.Addr, "GET k"); got != "$-1\r\n" {
		t.Errorf("GET after restart answered %q, want nil: nothing persists", got)
	}
}

// A paused server takes connections and commands and answers nothing until
// it is resumed; then it answers what it was sent.
func TestRedisPauseAndResume(t *testing.T) {
	r := StartRedis(t)
	r.Pause()
	c, err := net.DialTimeout("tcp", r.Addr, time.Second)
	if err != nil {
		t.Fatalf("dial a paused server: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	if err := c.SetReadDeadline(time.Now().Add(200 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if line, err := br.ReadString('\n'); err == nil {
		t.Fatalf("a paused server answered %q", line)
	}
	r.Resume()
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if line, err := br.ReadString('\n'); err != nil || line != "+PONG\r\n" {
		t.Fatalf("after Resume: %q, %v; want the PONG sent while paused", line, err)
	}
	r.Pause()
	r.Stop() // a paused server stops too
}

// recordT records skips and failures instead of ending the test.
type recordT struct {
	testing.TB
	skipped, failed bool
}

func (r *recordT) Helper()               {}
func (r *recordT) Skipf(string, ...any)  { r.skipped = true }
func (r *recordT) Fatalf(string, ...any) { r.failed = true }

func TestStartRedisWithoutServer(t *testing.T) {
	tests := []struct {
		ci          string
		skip, fails bool
	}{
		{ci: "", skip: true},
		{ci: "false", skip: true},
		{ci: "true", fails: true},
	}
	for _, tc := range tests {
		t.Run("CI="+tc.ci, func(t *testing.T) {
			t.Setenv("PATH", t.TempDir()) // no redis-server on it
			t.Setenv("CI", tc.ci)
			rt := &recordT{TB: t}
			if r := StartRedis(rt); r != nil {
				t.Errorf("StartRedis returned a server without redis-server on PATH")
			}
			if rt.skipped != tc.skip || rt.failed != tc.fails {
				t.Errorf("skipped %v, failed %v; want %v, %v", rt.skipped, rt.failed, tc.skip, tc.fails)
			}
		})
	}
}

// A server with a password and TLS answers only a client that speaks TLS,
// shows the authority's client certificate, and authenticates.
func TestRedisPasswordAndTLS(t *testing.T) {
	certs := NewCerts(t)
	r := StartRedisWith(t, RedisConfig{Args: []string{"--requirepass", "s3cret"}, Password: "s3cret", TLS: certs})
	if err := ping(r.Addr, RedisConfig{Password: "s3cret", TLS: certs}); err != nil {
		t.Errorf("PING with the password over TLS: %v", err)
	}
	for name, c := range map[string]RedisConfig{
		"plain":                 {Password: "s3cret"},
		"no password":           {TLS: certs},
		"wrong password":        {Password: "guess", TLS: certs},
		"no client certificate": {Password: "s3cret", TLS: &Certs{Client: &tls.Config{RootCAs: certs.Client.RootCAs}}},
	} {
		if err := ping(r.Addr, c); err == nil {
			t.Errorf("%s: PING answered", name)
		}
	}
}

// A sentinel answers PING, and knows the master it is told to watch.
func TestSentinel(t *testing.T) {
	master := StartRedis(t)
	host, port, _ := net.SplitHostPort(master.Addr)
	s := StartRedisWith(t, RedisConfig{Sentinel: "sentinel monitor m " + host + " " + port + " 1"})
	if got := redisCommand(t, s.Addr, "SENTINEL get-master-addr-by-name m"); got != "*2\r\n" {
		t.Errorf("the sentinel answered %q about its master", got)
	}
}
