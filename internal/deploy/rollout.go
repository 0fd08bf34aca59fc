package deploy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/affinityproxy/affinity/internal/harness"
)

// Rollout deploys backends of a cluster one after the other: each is taken
// out of service by Method, stopped, and, with Restart, started again and
// put back in service. Run's deploys and the rolling deploys of `affinity
// experiment` are both one.
type Rollout struct {
	// Binary is the affinity binary whose ctl sets the states.
	Binary string
	// Pool is the proxy's pool that holds the targets.
	Pool    string
	Method  Method
	Targets []string
	// Restart starts each target again once it is down, and puts it back
	// in service; without it, a target stays down.
	Restart bool
	// Idle and Timeout are ctl drain's --idle and --timeout.
	Idle, Timeout time.Duration
	// Proceed stops a target whose drain has not ended at Timeout all the
	// same, as a deploy that waits only so long does, and records it
	// (Step.TimedOut); without it, the rollout fails there.
	Proceed bool

	// Hooks for the caller's bookkeeping; nil ones are not called.
	// Out is called just before target is taken out.
	Out func(target string)
	// Closed is called, in a drain, once target takes no new user: from
	// at on.
	Closed func(target string, at time.Time)
	// Back is called when target may take new users again, from at on:
	// just before it is put back.
	Back func(target string, at time.Time)
}

// Step is the deploy of one target. Its times are offsets from the start
// the rollout was given.
type Step struct {
	Target string `json:"target"`
	// Took is how long the target took to drain (ctl drain --wait), or
	// to leave the config (remove).
	Took time.Duration `json:"took"`
	// Began is when the target stopped taking new users.
	Began time.Duration `json:"began"`
	// Back is when the target was back in service, the proxy routing to
	// it again; 0 without Restart.
	Back time.Duration `json:"back"`
	// Total is the target's whole deploy: from the start of taking it
	// out to its being back in service (or stopped, without Restart).
	Total time.Duration `json:"total"`
	// Sessions is what ctl last said of the sessions the balancer still
	// pinned to the target when it was drained (learn only); -1 unknown.
	Sessions int `json:"sessions"`
	// TimedOut says that the drain had not ended at Timeout, and that the
	// target was stopped with clients still on it (Proceed).
	TimedOut bool `json:"timed_out,omitempty"`
}

// Run deploys the targets of c one after the other and returns their
// steps, with times from start; on an error, the steps done so far.
func (r Rollout) Run(ctx context.Context, c *harness.Cluster, start time.Time) ([]Step, error) {
	var steps []Step
	for _, target := range r.Targets {
		step, err := r.one(ctx, c, target, start)
		if err != nil {
			return steps, err
		}
		steps = append(steps, step)
	}
	return steps, nil
}

// one deploys target.
func (r Rollout) one(ctx context.Context, c *harness.Cluster, target string, start time.Time) (Step, error) {
	if r.Out != nil {
		r.Out(target)
	}
	began := time.Now()
	step := Step{Target: target, Sessions: -1}
	switch r.Method {
	case Drain:
		set, last, timedOut, err := r.ctlDrain(ctx, c, target)
		if err != nil {
			return step, err
		}
		step.Sessions, step.TimedOut = sessionsIn(last), timedOut
		if r.Closed != nil {
			r.Closed(target, set)
		}
		step.Began, step.Took = set.Sub(start), time.Since(began)
		if err := c.Apply(ctx, harness.Fault{Action: harness.Kill, Target: target}); err != nil {
			return step, err
		}
	case Remove:
		// The reload is applied when Apply returns the first time it
		// is seen: new users may have been placed on the target until
		// then, which no drain promised otherwise.
		if err := c.Apply(ctx, harness.Fault{Action: harness.Remove, Target: target}); err != nil {
			return step, err
		}
		step.Began, step.Took = began.Sub(start), time.Since(began)
	default:
		return step, fmt.Errorf("deploy: unknown method %q", r.Method)
	}
	if r.Restart {
		if err := r.putBack(ctx, c, target); err != nil {
			return step, err
		}
		step.Back = time.Since(start)
	}
	step.Total = time.Since(began)
	return step, nil
}

// putBack starts target again and puts it back in service: for a removed
// one, back in the config (the harness's restart does both); for a drained
// one, `ctl ready`. It returns once the proxy routes to it.
func (r Rollout) putBack(ctx context.Context, c *harness.Cluster, target string) error {
	restart := harness.Fault{Action: harness.Restart, Target: target}
	if r.Method == Remove {
		// Before the reload that puts it back: a user placed there from
		// then on is no drain's fault.
		if r.Back != nil {
			r.Back(target, time.Now())
		}
		return c.Apply(ctx, restart)
	}
	if err := c.Apply(ctx, restart); err != nil {
		return err
	}
	// Before the state is set, for the same reason.
	if r.Back != nil {
		r.Back(target, time.Now())
	}
	if err := r.ctl(ctx, c, "ready", target); err != nil {
		return err
	}
	return c.Settle(ctx, restart)
}

// ctlDrain runs `affinity ctl drain POOL TARGET --wait` and returns, once
// ctl has exited, when the backend's state was set (ctl's first line),
// ctl's last line, and whether the drain had not ended at the timeout
// (ctl's exit 1), which is an error unless r.Proceed.
func (r Rollout) ctlDrain(ctx context.Context, c *harness.Cluster, target string) (set time.Time, last string, timedOut bool, err error) {
	cmd := exec.CommandContext(ctx, r.Binary, "ctl", "--admin", c.AdminAddr(), "drain", r.Pool, target, "--wait",
		"--idle", r.Idle.String(), "--timeout", r.Timeout.String())
	out, err := cmd.StdoutPipe()
	if err != nil {
		return set, "", false, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return set, "", false, err
	}
	var lines []string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if set.IsZero() {
			set = time.Now()
		}
		lines = append(lines, sc.Text())
	}
	err = cmd.Wait()
	var exit *exec.ExitError
	if r.Proceed && errors.As(err, &exit) && exit.ExitCode() == 1 && len(lines) > 0 {
		return set, lines[len(lines)-1], true, nil
	}
	if err != nil || len(lines) == 0 {
		return set, "", false, fmt.Errorf("ctl drain %s: %v\n%s%s", target, err, strings.Join(lines, "\n"), stderr.String())
	}
	return set, lines[len(lines)-1], false, nil
}

// sessionsIn reads "N sessions" from a line of ctl's; -1 when it has none.
func sessionsIn(line string) int {
	i := strings.Index(line, " sessions")
	if i < 0 {
		return -1
	}
	j := strings.LastIndexByte(line[:i], ' ')
	n, err := strconv.Atoi(line[j+1 : i])
	if err != nil {
		return -1
	}
	return n
}

// ctl runs `affinity ctl COMMAND POOL TARGET`.
func (r Rollout) ctl(ctx context.Context, c *harness.Cluster, command, target string) error {
	out, err := exec.CommandContext(ctx, r.Binary, "ctl", "--admin", c.AdminAddr(), command, r.Pool, target).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctl %s %s: %w\n%s", command, target, err, out)
	}
	return nil
}
