package chaos

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) { testutil.RemoveAffinityBinary() }))
}

// affinityBinary returns the affinity binary to play against: $CHAOS_BIN
// when set (make chaos passes the one it built), else cmd/affinity built
// once for the package's tests.
func affinityBinary(t *testing.T) string {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("the chaos harness injects faults on Linux only")
	}
	if bin := os.Getenv("CHAOS_BIN"); bin != "" {
		return bin
	}
	return testutil.AffinityBinary(t)
}

// shortScenario is the scenario scaled down to run in a test: 10
// clients at 100 req/s for 4 s, the fault at 1 s and recovery at 2.5 s.
// The proxy waits 1 s for headers, less than the hang lasts, so that hung
// requests time out as they do in the full scenario.
func shortScenario(bin, dir string, fault Fault) Scenario {
	return Scenario{
		Binary:                bin,
		Dir:                   dir,
		Fault:                 fault,
		Backends:              3,
		Clients:               10,
		Rate:                  100,
		Duration:              4 * time.Second,
		FaultAt:               time.Second,
		RecoverAt:             2500 * time.Millisecond,
		ResponseHeaderTimeout: time.Second,
	}
}

// checkPhysics asserts what the issue expects of a run, not its exact
// figures. A kill must cost no GET, move exactly the victim's clients, and
// move none of them twice. A hang may cost at most hangBound requests. Either
// way, the recovered backend must take new clients again.
func checkPhysics(t *testing.T, sc Scenario, res Result, hangBound int) {
	t.Helper()
	sc = sc.withDefaults()
	if want := int(sc.requests()); res.Requests != want {
		t.Errorf("%d requests sent, want %d: the load is open-loop", res.Requests, want)
	}
	if res.PinnedAtFault == 0 {
		t.Errorf("no client was on %s when it failed: the fault hit nothing", res.Victim)
	}
	switch sc.Fault {
	case FaultKill:
		if res.FailedGET != 0 {
			t.Errorf("%d GET requests failed (%v), want 0: GETs to a dead backend must be retried elsewhere", res.FailedGET, res.Failures)
		}
		if res.Moved != res.PinnedAtFault {
			t.Errorf("%d clients moved, want the %d on the killed %s", res.Moved, res.PinnedAtFault, res.Victim)
		}
		if res.MovedTwice != 0 {
			t.Errorf("%d clients moved twice, want 0: a moved client stays where it landed", res.MovedTwice)
		}
	case FaultHang:
		if res.Failed > hangBound {
			t.Errorf("%d requests failed (%v), want at most %d (%d clients and %d requests in flight on %s when it hung)",
				res.Failed, res.Failures, hangBound, res.PinnedAtFault, res.InFlightAtFault, res.Victim)
		}
		if res.Moved == 0 {
			t.Errorf("no client moved off the hung %s", res.Victim)
		}
	}
	if res.WholeAfter < 0 {
		t.Errorf("%s never served a new client after recovery", res.Victim)
	}
	if res.NewOnVictim == 0 {
		t.Errorf("none of %d fresh clients was placed on the recovered %s", res.NewClients, res.Victim)
	}
}

// logRun logs what a run measured beyond the table, and on failure the end
// of the proxy's log.
func logRun(t *testing.T, dir string, res Result) {
	t.Helper()
	t.Logf("%s: failures %v; %d clients and %d requests in flight on %s at the fault",
		res.Fault, res.Failures, res.PinnedAtFault, res.InFlightAtFault, res.Victim)
	if !t.Failed() || dir == "" {
		return
	}
	if log, err := os.ReadFile(filepath.Join(dir, "proxy.log")); err == nil {
		t.Logf("end of proxy.log:\n%s", log[max(0, len(log)-4<<10):])
	}
}

func TestChaosShort(t *testing.T) {
	bin := affinityBinary(t)
	for _, fault := range []Fault{FaultKill, FaultHang} {
		t.Run(string(fault), func(t *testing.T) {
			dir := t.TempDir()
			sc := shortScenario(bin, dir, fault)
			if fault == FaultKill {
				// POSTs ride along to show what a kill costs requests the
				// proxy may not replay; only GETs are held to zero.
				sc.PostEvery = 5
			}
			res, err := Run(t.Context(), sc)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			t.Logf("\n%s", res)
			checkPhysics(t, sc, res, res.PinnedAtFault)
			logRun(t, dir, res)
		})
	}
	t.Run("kill with reloads", func(t *testing.T) {
		dir := t.TempDir()
		sc := shortScenario(bin, dir, FaultKill)
		sc.Reloads = 6
		res, err := Run(t.Context(), sc)
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		t.Logf("\n%s", res)
		checkReloads(t, sc, res)
		logRun(t, dir, res)
	})
}

// checkReloads asserts what a run with reloads must show besides the
// physics of its fault: every rewrite of the config applied, and not one
// request failed (the load sends GETs only).
func checkReloads(t *testing.T, sc Scenario, res Result) {
	t.Helper()
	checkPhysics(t, sc, res, 0)
	if res.Reloaded != sc.Reloads {
		t.Errorf("the proxy applied %d reloads, want the %d rewrites of its config", res.Reloaded, sc.Reloads)
	}
	if res.Failed != 0 {
		t.Errorf("%d requests failed (%v) during %d reloads, want 0", res.Failed, res.Failures, sc.Reloads)
	}
}

// TestChaosFull plays the scenario, kill and hang, and prints the
// table: `CHAOS=full go test -run TestChaosFull -v ./internal/chaos/`.
func TestChaosFull(t *testing.T) {
	if os.Getenv("CHAOS") != "full" {
		t.Skip("set CHAOS=full to run the 20 s scenario (make chaos)")
	}
	bin := affinityBinary(t)
	var results []Result
	for _, fault := range []Fault{FaultKill, FaultHang} {
		dir := t.TempDir()
		sc := Scenario{Binary: bin, Dir: dir, Fault: fault}
		res, err := Run(t.Context(), sc)
		if err != nil {
			t.Fatalf("Run %s: %v", fault, err)
		}
		results = append(results, res)
		// The target for a hang: no more failures than requests
		// in flight on the backend when it hung.
		checkPhysics(t, sc, res, res.InFlightAtFault)
		logRun(t, dir, res)
	}
	// The kill again, with the config rewritten 20 times meanwhile.
	dir := t.TempDir()
	sc := Scenario{Binary: bin, Dir: dir, Fault: FaultKill, Reloads: 20}
	res, err := Run(t.Context(), sc)
	if err != nil {
		t.Fatalf("Run kill with reloads: %v", err)
	}
	results = append(results, res)
	checkReloads(t, sc, res)
	logRun(t, dir, res)
	t.Logf("3 backends, 50 clients with cookie jars, 300 req/s for 20 s; b2 killed or hung at 5 s, back at 12 s\n\n%s", Table(results...))
}

func TestRunRejectsAnInvalidScenario(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the chaos harness injects faults on Linux only")
	}
	_, err := Run(t.Context(), Scenario{Binary: "affinity", Backends: 1})
	if !errors.Is(err, errScenario) {
		t.Fatalf("Run = %v, want errScenario", err)
	}
}

// A run cut short leaves nothing behind: every port of the generated config
// is closed once Run returns.
func TestRunStopsEverythingWhenCanceled(t *testing.T) {
	bin := affinityBinary(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
	defer cancel()
	sc := shortScenario(bin, dir, FaultHang)
	sc.FaultAt = 500 * time.Millisecond // stopped when the end comes
	_, err := Run(ctx, sc)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run = %v, want the context's deadline", err)
	}
	cfg, err := config.Load(filepath.Join(dir, "proxy.yaml"))
	if err != nil {
		t.Fatalf("the run's config: %v", err)
	}
	addrs := []string{cfg.Listen, cfg.Admin.Listen}
	for _, b := range cfg.Pools[0].Backends {
		addrs = append(addrs, b.URL.Host)
	}
	for _, a := range addrs {
		if c, err := net.DialTimeout("tcp", a, time.Second); err == nil {
			_ = c.Close()
			t.Errorf("%s still accepts connections after Run returned", a)
		}
	}
}
