package experiment

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/testutil"
)

func dialable(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

func TestEmbeddedRedisGoesDownAndUpOnTheSameAddress(t *testing.T) {
	ctx := context.Background()
	r, err := startRedis(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	v, err := redisInfo(ctx, r.addr)
	if err != nil || !strings.HasPrefix(v, "redis ") {
		t.Fatalf("redisInfo = %q, %v", v, err)
	}
	if err := r.down(); err != nil {
		t.Fatal(err)
	}
	if dialable(r.addr) {
		t.Fatal("store still accepts connections after down")
	}
	if err := r.up(); err != nil {
		t.Fatal(err)
	}
	if _, err := redisInfo(ctx, r.addr); err != nil {
		t.Errorf("after up: %v", err)
	}
}

func TestExternalRedisTakesNoFaults(t *testing.T) {
	inner, err := startRedis(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer inner.close()
	r, err := startRedis(context.Background(), inner.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	if err := r.down(); !errors.Is(err, ErrExternalStore) {
		t.Errorf("down = %v, want ErrExternalStore", err)
	}
	if err := r.up(); !errors.Is(err, ErrExternalStore) {
		t.Errorf("up = %v, want ErrExternalStore", err)
	}
	if !dialable(inner.addr) {
		t.Error("closing the external store's handle stopped the server")
	}
}

func TestExternalRedisMustAnswer(t *testing.T) {
	addr := testutil.ClosedURL(t).Host
	if _, err := startRedis(context.Background(), addr); err == nil {
		t.Errorf("accepted %s, where nothing listens", addr)
	}
}
