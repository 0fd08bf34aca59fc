package experiment

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/harness"
)

// cellOverhead bounds what a cell costs besides its load: starting three or
// four processes, waiting until the proxy answers from each, scraping and
// killing everything. About 0.15 s on two cores; twice that for margin.
const cellOverhead = 300 * time.Millisecond

func TestPresetsAreValidAndFitTheirBudgets(t *testing.T) {
	for _, p := range Presets() {
		t.Run(p.Name, func(t *testing.T) {
			if err := p.Check(); err != nil {
				t.Fatal(err)
			}
			q := p.Shortened()
			if err := q.Check(); err != nil {
				t.Fatalf("quick: %v", err)
			}
			budget := func(s Spec) time.Duration { return time.Duration(s.Cells()) * (s.Duration + cellOverhead) }
			if b := budget(p); b > 2*time.Minute {
				t.Errorf("full run estimated at %v, want under 2 minutes", b)
			}
			if b := budget(q); b > 20*time.Second {
				t.Errorf("quick run estimated at %v, want under 20 s", b)
			}
			for _, n := range p.Claims {
				if _, ok := claimText[n]; !ok {
					t.Errorf("claim %d has no finding", n)
				}
			}
		})
	}
}

func TestQuickKeepsTheCellsTheEndToEndTestsAssert(t *testing.T) {
	has := func(s Spec, bal, store string) bool {
		return slices.Contains(s.Balancers, bal) && slices.Contains(s.Stores, store)
	}
	f, err := Preset("failover")
	if err != nil {
		t.Fatal(err)
	}
	q := f.Shortened()
	for _, c := range [][2]string{{"round-robin", StoreMemory}, {"cookie", StoreMemory}, {"cookie", StoreRedis}, {"cookie", StoreToken}} {
		if !has(q, c[0], c[1]) {
			t.Errorf("failover --quick lacks %s × %s", c[0], c[1])
		}
	}
	if len(q.Faults) != 2 || q.Faults[0].Action != harness.Kill || q.Faults[0].At >= q.Faults[1].At || q.Faults[1].At >= q.Duration {
		t.Errorf("failover --quick faults %v over %v", q.Faults, q.Duration)
	}
	s, _ := Preset("scale-out")
	q = s.Shortened()
	for _, b := range []string{"consistent-hash", ModuloHash} {
		if !has(q, b, StoreMemory) {
			t.Errorf("scale-out --quick lacks %s × memory", b)
		}
	}
}

// TestOutagePresetsKeepTheirStoryWhenQuick checks that each --quick run
// still has the cells its finding or end-to-end test reads, and its faults
// in an order and with gaps that show what they are meant to.
func TestOutagePresetsKeepTheirStoryWhenQuick(t *testing.T) {
	fault := func(s Spec, a harness.Action) (harness.Fault, bool) {
		i := slices.IndexFunc(s.Faults, func(f harness.Fault) bool { return f.Action == a })
		if i < 0 {
			return harness.Fault{}, false
		}
		return s.Faults[i], true
	}
	for _, name := range []string{"drain", "store-down", "hang"} {
		p, err := Preset(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []Spec{p, p.Shortened()} {
			var cells [][2]string
			switch name {
			case "drain":
				cells = [][2]string{{"cookie", StoreMemory}, {"consistent-hash", StoreMemory}, {"cookie", StoreRedis}, {"cookie", StoreToken}}
				rm, ok := fault(s, harness.Remove)
				if !ok || len(s.Faults) != 1 || rm.At < s.Duration/3 || rm.At > s.Duration*2/3 {
					t.Errorf("%s over %v: faults %v, want one remove mid-run", name, s.Duration, s.Faults)
				}
			case "store-down":
				cells = [][2]string{{"cookie", StoreMemory}, {"cookie", StoreRedis}, {"cookie", StoreCachedRedis}, {"cookie", StoreToken}}
				down, okd := fault(s, harness.StoreDown)
				up, oku := fault(s, harness.StoreUp)
				// Several of the report's finest buckets must fit in the
				// outage for the finding to measure it.
				if !okd || !oku || up.At-down.At < 5*fineBucket(s.Duration) || up.At >= s.Duration-fineBucket(s.Duration) {
					t.Errorf("%s over %v: faults %v, want the store down for several buckets and up before the end", name, s.Duration, s.Faults)
				}
			case "hang":
				cells = [][2]string{{"cookie", StoreMemory}, {"cookie", StoreRedis}}
				h, okh := fault(s, harness.Hang)
				r, okr := fault(s, harness.Resume)
				if !okh || !okr || r.At-h.At <= requestTimeout || r.At >= s.Duration {
					t.Errorf("%s over %v: faults %v, want a hang longer than the request timeout (%v), resumed before the end",
						name, s.Duration, s.Faults, requestTimeout)
				}
			}
			for _, c := range cells {
				if !slices.Contains(s.Balancers, c[0]) || !slices.Contains(s.Stores, c[1]) {
					t.Errorf("%s (%v) lacks %s × %s", name, s.Duration, c[0], c[1])
				}
			}
		}
	}
}

func TestPresetReturnsACopy(t *testing.T) {
	a, _ := Preset("failover")
	a.Balancers[0] = "changed"
	a.Faults[0].Target = "b9"
	b, _ := Preset("failover")
	if b.Balancers[0] == "changed" || b.Faults[0].Target == "b9" {
		t.Error("changing a preset's copy changed the preset")
	}
	if _, err := Preset("nope"); !errors.Is(err, ErrBadSpec) {
		t.Errorf("unknown preset: %v", err)
	}
}
