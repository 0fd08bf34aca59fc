package main

import (
	"strings"
	"testing"

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
