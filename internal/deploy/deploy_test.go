package deploy

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/affinityproxy/affinity/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) { testutil.RemoveAffinityBinary() }))
}

// binary returns the affinity binary: $DEPLOY_BIN when set (make deploy
// passes the one it built), else cmd/affinity built once for the tests.
func binary(t *testing.T) string {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("the harness runs its processes on Linux only")
	}
	if bin := os.Getenv("DEPLOY_BIN"); bin != "" {
		return bin
	}
	return testutil.AffinityBinary(t)
}

// short is a run sized for the tests: 12 users at a time, each a visit of
// about half a second, a drain that waits for 400 ms of quiet.
func short(t *testing.T, balancer string, m Method, restart bool, targets ...string) Run {
	return Run{
		Binary: binary(t), Dir: t.TempDir(), Balancer: balancer, Method: m,
		Backends: 3, Targets: targets, Restart: restart,
		Users: 12, Items: [2]int{2, 4}, Think: [2]time.Duration{20 * time.Millisecond, 60 * time.Millisecond},
		Idle: 400 * time.Millisecond, Timeout: 20 * time.Second,
		Before: time.Second, After: time.Second, Seed: 1,
	}
}

// execute runs r and logs its row of the table.
func execute(t *testing.T, r Run) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := r.Execute(ctx)
	if err != nil {
		t.Fatalf("%s: %v", r, err)
	}
	t.Log("\n" + Table([]Result{res}))
	if res.Users < r.Users*2 {
		t.Fatalf("%d users came, want more than twice the %d at a time: the load did not run", res.Users, r.Users)
	}
	return res
}

// TestDrainThenKill: a backend drained with ctl drain --wait and then
// killed costs no session and no request, and takes no new user once
// draining; removed from the config instead, it costs the sessions it held.
func TestDrainThenKill(t *testing.T) {
	drained := execute(t, short(t, "cookie", Drain, false, "b2"))
	if drained.AtRisk == 0 {
		t.Fatal("nobody was on b2 when its drain began: the run proves nothing")
	}
	if drained.Lost != 0 || drained.Errors != 0 || drained.NewOnTarget != 0 {
		t.Errorf("drain then kill: %d sessions lost, %d errors (%v), %d new users on b2; want none",
			drained.Lost, drained.Errors, drained.Failures, drained.NewOnTarget)
	}

	removed := execute(t, short(t, "cookie", Remove, false, "b2"))
	if removed.AtRisk == 0 || removed.Lost == 0 {
		t.Errorf("remove from the config: %d sessions lost of %d at risk; want some lost", removed.Lost, removed.AtRisk)
	}
	if removed.Lost > removed.AtRisk {
		t.Errorf("%d sessions lost, more than the %d on b2 when it went", removed.Lost, removed.AtRisk)
	}
}

// TestRollingDeployLearn: every backend in turn drained, killed, restarted
// and put back, with the learn balancer, loses no session; the learn table
// knows its users logged out, so no session is left when a drain ends.
func TestRollingDeployLearn(t *testing.T) {
	r := short(t, "learn", Drain, true, "b1", "b2", "b3")
	// Above the second a count of sessions is kept: the last one ctl
	// reads is made after the last logout.
	r.Idle = 1200 * time.Millisecond
	res := execute(t, r)
	if res.Lost != 0 || res.Errors != 0 || res.NewOnTarget != 0 {
		t.Errorf("rolling deploy: %d sessions lost, %d errors (%v), %d users placed on a draining backend; want none",
			res.Lost, res.Errors, res.Failures, res.NewOnTarget)
	}
	if len(res.Deploys) != 3 {
		t.Fatalf("%d deploys, want 3", len(res.Deploys))
	}
	for _, d := range res.Deploys {
		if d.Took < r.Idle {
			t.Errorf("%s drained in %v, less than the idle window", d.Target, d.Took)
		}
		if d.Sessions != 0 {
			t.Errorf("%s drained with %d sessions left in the learn table, want 0: its users logged out", d.Target, d.Sessions)
		}
		if d.TimedOut || d.Back <= d.Began || d.Total < d.Took {
			t.Errorf("%s: %+v, want it back after its drain began, in all no shorter than the drain", d.Target, d)
		}
	}
}

// TestDeployFull runs the long forms (make deploy) and prints their table.
func TestDeployFull(t *testing.T) {
	if os.Getenv("DEPLOY") != "full" {
		t.Skip("the long deploy runs: make deploy")
	}
	long := func(balancer string, m Method, restart bool, targets ...string) Run {
		return Run{
			Binary: binary(t), Dir: t.TempDir(), Balancer: balancer, Method: m,
			Backends: 3, Targets: targets, Restart: restart,
			Users: 60, Items: [2]int{3, 8}, Think: [2]time.Duration{100 * time.Millisecond, 500 * time.Millisecond},
			Idle: 2 * time.Second, Timeout: 2 * time.Minute,
			Before: 5 * time.Second, After: 5 * time.Second, Seed: 1,
		}
	}
	var results []Result
	for _, r := range []Run{
		long("cookie", Drain, false, "b2"),
		long("cookie", Remove, false, "b2"),
		long("learn", Drain, true, "b1", "b2", "b3"),
		long("cookie", Drain, true, "b1", "b2", "b3"),
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		res, err := r.Execute(ctx)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", r, err)
		}
		results = append(results, res)
	}
	fmt.Println(Table(results))
	for _, res := range results {
		if res.Run.Method == Drain && (res.Lost != 0 || res.Errors != 0 || res.NewOnTarget != 0) {
			t.Errorf("%s: %d lost, %d errors (%s), %d new on a draining backend; want none",
				res.Run, res.Lost, res.Errors, strings.Join(res.Failures, "; "), res.NewOnTarget)
		}
	}
}

func TestSessionsIn(t *testing.T) {
	for line, want := range map[string]int{
		"web/b2 drained after 5.4s: 0 in flight, idle 2s, 12 sessions": 12,
		"web/b2 drained after 5.4s: 0 in flight, idle 2s, 0 sessions":  0,
		"web/b2 drained after 5.4s: 0 in flight, idle 2s":              -1,
		"": -1,
	} {
		if got := sessionsIn(line); got != want {
			t.Errorf("sessionsIn(%q) = %d, want %d", line, got, want)
		}
	}
}
