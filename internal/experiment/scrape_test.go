package experiment

import (
	"strings"
	"testing"
)

func TestParseMetrics(t *testing.T) {
	text := `# HELP demoapp_sessions Shop sessions held.
# TYPE demoapp_sessions gauge
demoapp_sessions 42
demoapp_session_errors_total{kind="lost"} 3
demoapp_session_errors_total{kind="stale value"} 4
process_resident_memory_bytes 1.2e+07

garbage
demoapp_cache_hits_total NaNx
`
	m := parseMetrics(strings.NewReader(text))
	if m["demoapp_sessions"] != 42 || m["demoapp_session_errors_total"] != 7 || m["process_resident_memory_bytes"] != 12e6 {
		t.Errorf("parsed %v", m)
	}
	if _, ok := m["demoapp_cache_hits_total"]; ok {
		t.Error("parsed a malformed value")
	}
}
