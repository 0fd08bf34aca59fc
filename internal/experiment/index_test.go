package experiment

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestWriteIndex: the index lists every claim the presets measured, in
// order of claim, each with its verdict, headline and a link to its
// report; a preset that did not run says why.
func TestWriteIndex(t *testing.T) {
	crash := run(killCell("cookie", StoreMemory, 31, 33), killCell("cookie", StoreRedis, 0, 33))
	crash.Spec.Claims, crash.Preset, crash.Title = []int{2, 1}, "failover", "Kill 1 of 3"
	crash.Settings.Backends = 3
	crash.Started, crash.Elapsed = time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC), 95
	crash.Machine = Machine{Affinity: "v1.2.3 (abc1234)", CPUModel: "Test CPU", CPUs: 2, OS: "linux/amd64"}
	retry := retryRun([4]int{0, 0, 12, 0}, [4]int{9, 0, 0, 0})
	retry.Spec.Claims, retry.Preset = []int{13}, "retry-safety"
	runs := []Ran{
		{Preset: "failover", Dir: "failover", Results: crash},
		{Preset: "store-down", Dir: "store-down", Err: "interrupted"},
		{Preset: "retry-safety", Dir: "retry-safety", Results: retry},
	}
	dir := t.TempDir()
	if err := WriteIndex(dir, runs, "affinity experiment run --preset all"); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, "index.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(md)
	for _, want := range []string{
		"affinity v1.2.3 (abc1234), Test CPU, nproc 2, linux/amd64; started 2026-12-02 08:00 UTC.",
		"| 1 | " + claimText[1] + " | agrees | cookie × memory lost 31.0% of users; b2 held 33.0% | [failover](failover/report.md) |",
		"| 13 | " + claimText[13] + " | agrees | retry every method, no key: 12 carts ordered twice; idempotent-only or keyed: 0 | [retry-safety](retry-safety/report.md) |",
		"[failover](failover/report.md) (2 cells, 95 s)", "store-down (not run: interrupted)",
		"affinity experiment run --preset all",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("index.md lacks %q:\n%s", want, text)
		}
	}
	if i, j := strings.Index(text, "| 1 |"), strings.Index(text, "| 2 |"); i < 0 || j < i {
		t.Errorf("claims not in order of their numbers:\n%s", text)
	}
	var s Summary
	data, err := os.ReadFile(filepath.Join(dir, "summary.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatal(err)
	}
	if len(s.Claims) != 3 || s.Claims[0].Claim != 1 || s.Claims[2].Preset != "retry-safety" || len(s.Presets) != 3 || s.Presets[1].Error != "interrupted" {
		t.Errorf("summary.json %+v", s)
	}
}
