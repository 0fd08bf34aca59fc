package logging

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// accessName is the name of the access logger in these tests.
const accessName = "access"

// syncBuffer is a bytes.Buffer safe for the logger's writes and the
// test's reads from different goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestServeLoggerAccessBatched: access lines wait in the buffer, other
// lines are written at once, and close writes what waits.
func TestServeLoggerAccessBatched(t *testing.T) {
	var out syncBuffer
	sl, err := NewServe("info", "json", accessName, &out)
	if err != nil {
		t.Fatal(err)
	}
	sl.Named(accessName).Info("request", zap.String("path", "/batched"))
	sl.Warn("backend down")
	if got := out.String(); !strings.Contains(got, "backend down") || strings.Contains(got, "/batched") {
		t.Errorf("before close, output:\n%s\nwant the warning and not the access line", got)
	}
	if err := sl.Close(); err != nil {
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
	sl, err := NewServe("info", "json", accessName, &out)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sl.Close() }()
	sl.Named(accessName).Info("request", zap.String("path", "/flushed"))
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
				sl, err := NewServe("info", format, accessName, f)
				if err != nil {
					b.Fatal(err)
				}
				defer func() { _ = sl.Close() }()
				log := sl.Named(accessName)
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

// TestServeLoggerLevel: the level of serve's logger can change while it is
// in use, as a reload of log.level does, in both directions.
func TestServeLoggerLevel(t *testing.T) {
	var out syncBuffer
	sl, err := NewServe("info", "console", "access", &out)
	if err != nil {
		t.Fatal(err)
	}
	defer sl.Close()
	log, atom := sl.Logger, sl.Level
	log.Debug("hidden-1")
	atom.SetLevel(zapcore.DebugLevel)
	log.Debug("shown-1")
	atom.SetLevel(zapcore.ErrorLevel)
	log.Warn("hidden-2")
	log.Error("shown-2")
	got := out.String()
	for _, want := range []string{"shown-1", "shown-2"} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %s:\n%s", want, got)
		}
	}
	for _, hidden := range []string{"hidden-1", "hidden-2"} {
		if strings.Contains(got, hidden) {
			t.Errorf("output has %s:\n%s", hidden, got)
		}
	}
	if _, err := NewServe("loud", "console", "access", &out); err == nil {
		t.Error("level loud accepted")
	}
}
