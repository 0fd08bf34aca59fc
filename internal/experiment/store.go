package experiment

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
)

// redisStore is the Redis of a cell: an embedded miniredis the harness can
// stop and start (the store-down and store-up faults), or an external server
// it only uses.
type redisStore struct {
	addr string
	mini *miniredis.Miniredis // nil for an external server
}

// ErrExternalStore is returned by a store fault on a Redis the harness did
// not start.
var ErrExternalStore = errors.New("cannot stop or start an external Redis (--redis-addr)")

// startRedis returns the external Redis at addr, checked with a PING, or
// starts an embedded one on a free loopback port when addr is empty.
func startRedis(ctx context.Context, addr string) (*redisStore, error) {
	if addr != "" {
		if _, err := redisInfo(ctx, addr); err != nil {
			return nil, err
		}
		return &redisStore{addr: addr}, nil
	}
	m := miniredis.NewMiniRedis()
	if err := m.StartAddr("127.0.0.1:0"); err != nil {
		return nil, fmt.Errorf("embedded redis: %w", err)
	}
	return &redisStore{addr: m.Addr(), mini: m}, nil
}

// down stops the embedded server; its data is kept for up.
func (r *redisStore) down() error {
	if r.mini == nil {
		return ErrExternalStore
	}
	r.mini.Close()
	return nil
}

// up starts the embedded server again on the same address.
func (r *redisStore) up() error {
	if r.mini == nil {
		return ErrExternalStore
	}
	if err := r.mini.Restart(); err != nil {
		return fmt.Errorf("embedded redis: restart on %s: %w", r.addr, err)
	}
	return nil
}

// close stops an embedded server for good.
func (r *redisStore) close() {
	if r.mini != nil {
		r.mini.Close()
	}
}

// redisInfo PINGs the Redis at addr and returns its version, or "redis
// (version unknown)" when it will not tell (miniredis has no INFO server).
// Two commands do not justify a client: this speaks RESP by hand.
func redisInfo(ctx context.Context, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", fmt.Errorf("redis %s: %w", addr, err)
	}
	defer func() { _ = conn.Close() }()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	r := bufio.NewReader(conn)
	if _, err := io.WriteString(conn, "*1\r\n$4\r\nPING\r\n"); err != nil {
		return "", fmt.Errorf("redis %s: ping: %w", addr, err)
	}
	if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "+PONG") {
		return "", fmt.Errorf("redis %s: ping: got %q, %v", addr, strings.TrimSpace(line), err)
	}
	const unknown = "redis (version unknown)"
	if _, err := io.WriteString(conn, "*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n"); err != nil {
		return unknown, nil
	}
	head, err := r.ReadString('\n')
	n, convErr := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(head, "$")))
	if err != nil || !strings.HasPrefix(head, "$") || convErr != nil || n < 0 || n > 1<<20 {
		return unknown, nil
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return unknown, nil
	}
	for line := range strings.SplitSeq(string(body), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			return "redis " + v, nil
		}
	}
	return unknown, nil
}

// embeddedVersion names the embedded Redis as linked into the binary.
func embeddedVersion() string {
	return "miniredis " + moduleVersion("github.com/alicebob/miniredis/v2") + " (embedded)"
}

// moduleVersion returns the version of a module linked into the binary.
func moduleVersion(path string) string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == path {
				return d.Version
			}
		}
	}
	return "(unknown)"
}
