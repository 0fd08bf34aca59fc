package experiment

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/harness"
)

// synthetic returns the results of a two-cell failover run, with figures
// chosen by hand.
func synthetic() *Results {
	kill := harness.Applied{Fault: harness.Fault{At: 2 * time.Second, Action: harness.Kill, Target: "b2"}, Start: 2 * time.Second, End: 2 * time.Second}
	bucket := func(start time.Duration, ok, errs int) Bucket {
		return Bucket{Start: start, Width: time.Second, Requests: ok + errs, OK: ok, Errors: errs,
			ByBackend: map[string]int{"b1": ok / 2, "b2": ok - ok/2}}
	}
	timeline := []Bucket{bucket(0, 400, 0), bucket(time.Second, 390, 10), bucket(2*time.Second, 300, 100)}
	mk := func(bal, store string, lost float64) CellResult {
		return CellResult{
			Balancer: bal, Store: store, Requests: 1200, Errors: 110, ErrorKinds: map[string]int{"session_lost": 100, "http_502": 10},
			Users: 150, SessionsLostPct: lost, UsersMovedPct: ptr(33.0), VictimUsersPct: ptr(33.0), Imbalance: 1.2,
			P50Ms: 1.5, P95Ms: 3, P99Ms: 5, ThroughputRPS: 363,
			Backends: []BackendStats{{Name: "b1", Requests: 600, Sessions: 70, RSSBytes: 16 << 20}, {Name: "b2", Requests: 500}, {Name: "b3", Requests: 100}},
			Faults:   []harness.Applied{kill}, Timeline: timeline, Fine: timeline,
		}
	}
	s, _ := Preset("failover")
	return &Results{
		Preset: "failover", Title: s.Title, Command: "affinity experiment run --preset failover --quick",
		Started: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), Elapsed: 12,
		Machine:  Machine{CPUs: 2, CPUModel: "Test CPU", OS: "linux/amd64", Go: "go1.26", Affinity: "v1", Redis: "miniredis"},
		Settings: settings(s, Options{}),
		Spec:     s,
		Cells:    []CellResult{mk("round-robin", StoreMemory, 97), mk("cookie", StoreMemory, 34)},
	}
}

func TestResultsJSONFieldNames(t *testing.T) {
	data, err := json.Marshal(synthetic())
	if err != nil {
		t.Fatal(err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"preset", "cells", "machine", "settings", "command"} {
		if _, ok := top[k]; !ok {
			t.Errorf("results.json lacks %q", k)
		}
	}
	var cells []map[string]any
	if err := json.Unmarshal(top["cells"], &cells); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"balancer", "store", "requests", "errors", "sessions_lost_pct", "users_moved_pct",
		"imbalance", "p50_ms", "p99_ms", "throughput_rps"} {
		if _, ok := cells[0][k]; !ok {
			t.Errorf("a cell of results.json lacks %q", k)
		}
	}
	if cells[0]["balancer"] != "round-robin" || cells[0]["sessions_lost_pct"] != 97.0 {
		t.Errorf("cell 0 = %v", cells[0])
	}
	faults, _ := cells[0]["faults"].([]any)
	if len(faults) != 1 || faults[0].(map[string]any)["fault"] != "2s kill b2" || faults[0].(map[string]any)["start_s"] != 2.0 {
		t.Errorf("faults = %v", cells[0]["faults"])
	}
}

func TestWriteReport(t *testing.T) {
	dir := t.TempDir()
	paths, err := WriteReport(dir, synthetic())
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"report.md", "results.json", "timeline.csv", "timeline.png", "timeline.svg",
		"backend_load.png", "sessions_lost.png", "sessions_lost.svg", "users_moved.png", "latency.png"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if len(paths) < 13 {
		t.Errorf("WriteReport returned %d paths", len(paths))
	}
	png, _ := os.ReadFile(filepath.Join(dir, "timeline.png"))
	if !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Error("timeline.png is not a PNG")
	}
	svg, _ := os.ReadFile(filepath.Join(dir, "sessions_lost.svg"))
	if !bytes.Contains(svg, []byte("<svg")) {
		t.Error("sessions_lost.svg is not an SVG")
	}

	md, _ := os.ReadFile(filepath.Join(dir, "report.md"))
	for _, want := range []string{
		"# affinity experiment: failover",
		"**Claim 1**", "**Claim 2**",
		"cookie × memory lost the session of 34.0% of users when b2 was killed at 2.0 s",
		"| cookie | memory | 1200 | 110 |",
		"session_lost 100, http_502 10",
		"Test CPU, nproc 2",
		"affinity experiment run --preset failover --quick",
		"![timeline](timeline.png)",
		"2s kill b2",
		"**What this means for you**: With sessions in server memory",
		"- **Claim 1** (agrees):",
		"Pass band: agrees when cookie × memory lost within 8.2 points",
		"- **Claim 2** (not measured):",
	} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report.md lacks %q", want)
		}
	}

	f, _ := os.Open(filepath.Join(dir, "timeline.csv"))
	defer func() { _ = f.Close() }()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1+2*3 {
		t.Fatalf("timeline.csv has %d rows, want a header and 3 seconds × 2 cells", len(rows))
	}
	if got := strings.Join(rows[0], ","); got != "balancer,store,variant,second,requests,ok,errors,session_lost,session_stale,p50_ms,p99_ms,imbalance,b1,b2,b3" {
		t.Errorf("header %s", got)
	}
	if got := strings.Join(rows[3], ","); got != "round-robin,memory,,2,400,300,100,0,0,0.00,0.00,0.00,150,150,0" {
		t.Errorf("row 3 %s", got)
	}
}

func TestWriteSummary(t *testing.T) {
	var b bytes.Buffer
	WriteSummary(&b, synthetic())
	out := b.String()
	if !strings.Contains(out, "cookie          × memory") || !strings.Contains(out, "claim 1 (agrees): Measured") {
		t.Errorf("summary:\n%s", out)
	}
}

// TestReportSaysHowMembershipChanged checks that a report with add or
// remove says the proxy reloaded its config, and one without says nothing
// of it.
func TestReportSaysHowMembershipChanged(t *testing.T) {
	tests := []struct {
		faults harness.Schedule
		reload bool
	}{
		{harness.Schedule{{At: time.Second, Action: harness.Kill, Target: "b2"}}, false},
		{harness.Schedule{{At: time.Second, Action: harness.Add, Target: "b4"}}, true},
		{harness.Schedule{{At: time.Second, Action: harness.Remove, Target: "b2"}}, true},
	}
	for _, tt := range tests {
		res := synthetic()
		res.Spec.Faults = tt.faults
		var b strings.Builder
		if err := writeMarkdown(&b, res, nil); err != nil {
			t.Fatal(err)
		}
		md := b.String()
		if got := strings.Contains(md, "had the running proxy reload it"); got != tt.reload {
			t.Errorf("%v: report mentions the reload: %v, want %v", tt.faults, got, tt.reload)
		}
		if strings.Contains(md, "restarted the proxy") {
			t.Errorf("%v: report says the proxy was restarted", tt.faults)
		}
	}
}
