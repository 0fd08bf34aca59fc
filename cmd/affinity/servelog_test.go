package main

import (
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/affinityproxy/affinity/proxy"
)

// TestServeLoggerAccessBatched: access lines wait in the buffer, other
// lines are written at once, and close writes what waits.
func TestServeLoggerAccessBatched(t *testing.T) {
	var out syncBuffer
	sl, err := newServeLogger("info", "json", &out)
	if err != nil {
		t.Fatal(err)
	}
	sl.Named(proxy.AccessLogName).Info("request", zap.String("path", "/batched"))
	sl.Warn("backend down")
	if got := out.String(); !strings.Contains(got, "backend down") || strings.Contains(got, "/batched") {
		t.Errorf("before close, output:\n%s\nwant the warning and not the access line", got)
	}
	if err := sl.close(); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); !strings.Contains(got, `"path":"/batched"`) {
		t.Errorf("after close, output lacks the access line:\n%s", got)
	}
}

// syncCounter is a log file that counts the Syncs (fsync, for a file)
// asked of it.
type syncCounter struct {
	syncBuffer
	syncs atomic.Int32
}

func (s *syncCounter) Sync() error {
	s.syncs.Add(1)
	return nil
}

// TestServeLoggerAccessFlushNoSync: the access buffer's periodic flush
// writes the waiting lines to the log file without syncing it.
func TestServeLoggerAccessFlushNoSync(t *testing.T) {
	var out syncCounter
	sl, err := newServeLogger("info", "json", &out)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sl.close() }()
	sl.Named(proxy.AccessLogName).Info("request", zap.String("path", "/flushed"))
	deadline := time.Now().Add(accessFlush + 5*time.Second)
	for !strings.Contains(out.String(), "/flushed") {
		if time.Now().After(deadline) {
			t.Fatalf("no flush after %v", accessFlush+5*time.Second)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := out.syncs.Load(); n != 0 {
		t.Errorf("the flush synced the log file %d times, want 0", n)
	}
}

// BenchmarkAccessLine writes one access line, as the proxy logs it, to a
// file, in each format: batched by serve's logger, or written at once as
// every other line is (a locked write per line). BenchmarkHandler in proxy
// counts the rest of the access log's cost per request, building the line.
func BenchmarkAccessLine(b *testing.B) {
	for _, format := range []string{"console", "json"} {
		for _, batched := range []bool{true, false} {
			name := format + "/direct"
			if batched {
				name = format + "/batched"
			}
			b.Run(name, func(b *testing.B) {
				f, err := os.Create(filepath.Join(b.TempDir(), "log"))
				if err != nil {
					b.Fatal(err)
				}
				defer f.Close()
				sl, err := newServeLogger("info", format, f)
				if err != nil {
					b.Fatal(err)
				}
				defer func() { _ = sl.close() }()
				log := sl.Named(proxy.AccessLogName)
				if !batched {
					log = sl.Logger
				}
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					// The proxy keeps its fields in a pool; so does each
					// goroutine here, so that only the logging is measured.
					fs := []zap.Field{zap.String("client", "192.0.2.1:50312"), zap.String("method", "GET"),
						zap.String("host", "shop.example"), zap.String("path", "/cart"), zap.Int("status", 200),
						zap.Int64("bytes", 1432), zap.Duration("duration", 1200*time.Microsecond),
						zap.String("pool", "web"), zap.String("backend", "web-2"), zap.Int("attempts", 1),
						zap.String("sticky", "kept"), zap.Bool("aborted", false)}
					for pb.Next() {
						log.Info("request", fs...)
					}
				})
			})
		}
	}
}
