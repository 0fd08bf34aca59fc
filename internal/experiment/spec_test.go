package experiment

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/harness"
)

func TestParseSpec(t *testing.T) {
	tests := []struct {
		name, yaml string
		check      func(*testing.T, Spec)
		err        string
	}{
		{"defaults from steady", "name: mine\n", func(t *testing.T, s Spec) {
			if s.Backends != steady.Backends || s.Rate != steady.Rate || s.Title != "mine" || len(s.Faults) != 0 {
				t.Errorf("%+v", s)
			}
		}, ""},
		{"full", `name: long
backends: 4
users: 20
rate: 50
duration: 30s
items: [1, 2]
churn: 0.5
balancers: [cookie]
stores: [memory, token]
faults: ["20s restart b2", "10s kill b2"]
quick: {duration: 3s, users: 10, stores: [memory]}
`, func(t *testing.T, s Spec) {
			if s.Backends != 4 || s.Duration != 30*time.Second || s.MinItems != 1 || s.MaxItems != 2 || s.Churn != 0.5 {
				t.Errorf("%+v", s)
			}
			if s.Faults[0].Action != harness.Kill {
				t.Errorf("faults not sorted: %v", s.Faults)
			}
			q := s.Shortened()
			if q.Duration != 3*time.Second || q.Users != 10 || q.Faults[0].At != time.Second || !slices.Equal(q.Stores, []string{StoreMemory}) || !slices.Equal(q.Balancers, []string{"cookie"}) {
				t.Errorf("quick %+v", q)
			}
		}, ""},
		{"from a preset", "preset: failover\nname: failover-long\nduration: 60s\nbalancers: [cookie, round-robin]\n", func(t *testing.T, s Spec) {
			f, _ := Preset("failover")
			if s.Name != "failover-long" || s.Title != f.Title || !slices.Equal(s.Claims, []int{1, 2}) || s.Users != f.Users || s.Duration != time.Minute {
				t.Errorf("%+v", s)
			}
			// The preset's faults, at the times it gives them.
			if len(s.Faults) != 2 || s.Faults[0] != f.Faults[0] || !slices.Equal(s.Stores, f.Stores) {
				t.Errorf("faults %v, stores %v: want the preset's", s.Faults, s.Stores)
			}
		}, ""},
		{"a preset's claims and faults replaced", "preset: failover\nclaims: [1]\nfaults: [\"1s hang b1\"]\n", func(t *testing.T, s Spec) {
			if !slices.Equal(s.Claims, []int{1}) || len(s.Faults) != 1 || s.Faults[0].Action != harness.Hang {
				t.Errorf("claims %v, faults %v", s.Claims, s.Faults)
			}
		}, ""},
		{"no claims without a preset", "name: x\n", func(t *testing.T, s Spec) {
			if len(s.Claims) != 0 {
				t.Errorf("claims %v from steady, want none: a custom run names its own", s.Claims)
			}
		}, ""},
		{"variants and the keys of the new presets", `name: deploys
logout: true
churn: 1
checkout_work: 300ms
response_timeout: 800ms
drain: {idle: 300ms, timeout: 2s}
variants: ["mode=drain", "retry=all client=key"]
faults: ["1s deploy"]
quick: {variants: ["mode=drain"]}
`, func(t *testing.T, s Spec) {
			if !s.Logout || s.Replay || s.CheckoutWork != 300*time.Millisecond || s.responseTimeout() != 800*time.Millisecond ||
				s.drainIdle() != 300*time.Millisecond || s.drainTimeout() != 2*time.Second || s.Cells() != 2*len(steady.Balancers)*len(steady.Stores) {
				t.Errorf("%+v", s)
			}
			if q := s.Shortened(); !slices.Equal(q.Variants, []string{"mode=drain"}) || q.Faults[0].Action != harness.Deploy {
				t.Errorf("quick %+v", q)
			}
		}, ""},
		{"the preset's variants and drain", "preset: rolling-deploy\nname: x\n", func(t *testing.T, s Spec) {
			if len(s.Variants) != 2 || s.DrainIdle != rollingDeploy.DrainIdle || !s.Logout || s.Churn != 1 {
				t.Errorf("%+v", s)
			}
		}, ""},
		{"defaults without settings", "name: x\n", func(t *testing.T, s Spec) {
			if s.responseTimeout() != requestTimeout || s.drainIdle() != defaultDrainIdle || s.drainTimeout() != defaultDrainTimeout || s.Cells() != len(steady.Balancers)*len(steady.Stores) {
				t.Errorf("%+v", s)
			}
		}, ""},
		{"replay without logout", "name: x\nreplay: true\n", nil, "replay needs logout"},
		{"a bad variant", "name: x\nvariants: [\"retry=sometimes\"]\n", nil, "want safe or all"},
		{"a drain shorter than its idle window", "name: x\ndrain: {idle: 2s, timeout: 1s}\n", nil, "want a timeout above the idle window"},
		{"a deploy with a backend down", "name: x\nfaults: [\"1s kill b1\", \"2s deploy\"]\n", nil, "a deploy needs every backend running"},
		{"unknown preset", "preset: nope\n", nil, `no preset "nope"`},
		{"unknown key", "name: x\nbackend: 3\n", nil, "field backend not found"},
		{"bad fault", "name: x\nfaults: [\"1s smash b1\"]\n", nil, "unknown action"},
		{"fault out of state", "name: x\nfaults: [\"1s restart b1\"]\n", nil, "b1 is running"},
		{"unknown balancer", "name: x\nbalancers: [random]\n", nil, "unknown balancer"},
		{"unknown store", "name: x\nstores: [disk]\n", nil, "unknown store"},
		{"too many arrivals", "name: x\nrate: 100000\nduration: 10m\n", nil, "arrivals per cell"},
		{"items", "name: x\nitems: [5, 2]\n", nil, "items 5-2"},
		{"items shape", "name: x\nitems: [5]\n", nil, "want [min, max]"},
		{"bad quick", "name: x\nquick: {stores: [disk]}\n", nil, "quick:"},
		{"not yaml", "name: [\n", nil, "bad experiment spec"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "spec.yaml")
			if err := os.WriteFile(p, []byte(tt.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			s, err := LoadSpec(p)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !errors.Is(err, ErrBadSpec) {
					t.Fatalf("LoadSpec = %v, want an ErrBadSpec containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, s)
		})
	}
	if _, err := LoadSpec(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Error("LoadSpec of a missing file succeeded")
	}
}

// TestDocsExampleSpecRuns reads the example spec of docs/experiments.md as
// a user would copy it: it must load, name claims, and have the cells each
// of their findings reads.
func TestDocsExampleSpecRuns(t *testing.T) {
	doc, err := os.ReadFile("../../docs/experiments.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "```yaml\n")
	example, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("docs/experiments.md has no ```yaml example")
	}
	s, err := parseSpec([]byte(example))
	if err != nil {
		t.Fatalf("the example does not load: %v\n%s", err, example)
	}
	if len(s.Claims) == 0 {
		t.Fatal("the example names no claim: its report would have no finding")
	}
	res := &Results{Spec: s, Settings: settings(s, Options{})}
	for _, b := range s.Balancers {
		for _, st := range s.Stores {
			res.Cells = append(res.Cells, CellResult{Balancer: b, Store: st})
		}
	}
	for _, n := range s.Claims {
		if f := finding(n, res); strings.Contains(f.Text, "the run lacks the cell") {
			t.Errorf("claim %d: %s", n, f.Text)
		}
	}
}

// TestDocsClaimsTable keeps the claims table of docs/experiments.md in step
// with the harness: every claim, with its text, against every preset that
// measures it, and a verdict; and, once the committed reports carry a
// summary (examples/reports/summary.json, from --preset all), the verdicts
// they found.
func TestDocsClaimsTable(t *testing.T) {
	doc, err := os.ReadFile("../../docs/experiments.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "## The claims and today's verdicts\n")
	if !ok {
		t.Fatal("docs/experiments.md has no section of the claims and their verdicts")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	verdicts := map[string]string{} // "claim preset" → verdict
	for line := range strings.Lines(section) {
		cols := strings.Split(strings.TrimSpace(line), "|")
		if len(cols) != 6 || strings.HasPrefix(strings.TrimSpace(cols[1]), "-") || strings.TrimSpace(cols[1]) == "#" {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(cols[1]))
		text, preset, verdict := strings.TrimSpace(cols[2]), strings.Trim(strings.TrimSpace(cols[3]), "`"), strings.TrimSpace(cols[4])
		if err != nil || text != claimText[n] {
			t.Errorf("row %q: claim %q, want the text of claim %d: %q", line, cols[1], n, claimText[n])
			continue
		}
		word, _, _ := strings.Cut(verdict, ":")
		word, _, _ = strings.Cut(word, ",")
		if !slices.Contains([]string{Agrees, Disagrees, Partly, NotMeasured}, word) {
			t.Errorf("claim %d, %s: verdict %q, want agrees, disagrees, partly or not measured", n, preset, verdict)
		}
		verdicts[fmt.Sprint(n, " ", preset)] = word
	}
	for _, p := range Presets() {
		for _, n := range p.Claims {
			if _, ok := verdicts[fmt.Sprint(n, " ", p.Name)]; !ok {
				t.Errorf("the table lacks claim %d measured by %s", n, p.Name)
			}
		}
	}
	if len(verdicts) != countClaims(Presets()) {
		t.Errorf("the table has %d rows, the presets measure %d claims: a row names a preset that does not measure it", len(verdicts), countClaims(Presets()))
	}
	data, err := os.ReadFile("../../examples/reports/summary.json")
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	var s Summary
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatal(err)
	}
	for _, c := range s.Claims {
		if got := verdicts[fmt.Sprint(c.Claim, " ", c.Preset)]; got != c.Verdict {
			t.Errorf("claim %d, %s: the docs say %q, the committed report %q", c.Claim, c.Preset, got, c.Verdict)
		}
	}
}

func countClaims(ps []Spec) int {
	n := 0
	for _, p := range ps {
		n += len(p.Claims)
	}
	return n
}
