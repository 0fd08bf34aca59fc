package experiment

import (
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/affinityproxy/affinity/internal/deploy"
	"github.com/affinityproxy/affinity/internal/harness"
)

// DeployStep is one backend's part of a rolling deploy, as results.json
// has it: times in seconds from the start of the load.
type DeployStep struct {
	Target string `json:"target"`
	// BeganS is when the backend stopped taking new users: its drain state
	// set (mode drain), or the config without it applied (mode remove).
	BeganS float64 `json:"began_s"`
	// OutS is how long taking it out took: the drain until idle, or the
	// reload that removed it.
	OutS float64 `json:"out_s"`
	// BackS is when it was back in service, the proxy routing to it.
	BackS float64 `json:"back_s"`
	// TotalS is its whole deploy: out, stopped, started and back.
	TotalS float64 `json:"total_s"`
	// TimedOut says the drain had not ended at its timeout: the backend
	// was stopped with users still on it.
	TimedOut bool `json:"timed_out,omitempty"`
}

// rollout deploys every running backend of the cell in turn, as
// internal/deploy does: with mode=drain, `affinity ctl drain --wait`
// (stopping it at the drain's timeout all the same), a kill, a restart and
// `ctl ready`; otherwise out of the config, a graceful stop, a restart and
// back in the config. It keeps the steps for the cell's result.
func (c *procs) rollout(ctx context.Context) error {
	ro := deploy.Rollout{
		Binary: c.Exe, Pool: poolName, Method: deploy.Remove, Restart: true,
		Idle: c.spec.drainIdle(), Timeout: c.spec.drainTimeout(), Proceed: true,
	}
	if c.mode == modeDrain {
		ro.Method = deploy.Drain
	}
	for _, b := range c.Backends() {
		if b.State == harness.Running {
			ro.Targets = append(ro.Targets, b.Name)
		}
	}
	steps, err := ro.Run(ctx, c.Cluster, c.start)
	c.steps = steps
	return err
}

// deployFigures sets r's deploy figures from the steps of its rollout and
// the deploy fault as applied, and counts each backend out of rotation
// from its step's start until it was back.
func deployFigures(r *CellResult, steps []deploy.Step, samples []Sample, d time.Duration, backends []string, initial int) {
	f, ok := harness.First(r.Faults, func(a harness.Action) bool { return a == harness.Deploy })
	if !ok && len(steps) == 0 {
		return
	}
	faults := make([]harness.Applied, 0, len(r.Faults)+2*len(steps))
	for _, a := range r.Faults {
		if a.Action != harness.Deploy {
			faults = append(faults, a)
		}
	}
	for _, st := range steps {
		r.Deploys = append(r.Deploys, DeployStep{
			Target: st.Target, BeganS: st.Began.Seconds(), OutS: st.Took.Seconds(),
			BackS: st.Back.Seconds(), TotalS: st.Total.Seconds(), TimedOut: st.TimedOut,
		})
		out := st.Back - st.Total
		faults = append(faults,
			harness.Applied{Fault: harness.Fault{Action: harness.Remove, Target: st.Target}, Start: out, End: out, Settled: out},
			harness.Applied{Fault: harness.Fault{Action: harness.Restart, Target: st.Target}, Start: st.Back, End: st.Back, Settled: st.Back})
	}
	slices.SortStableFunc(faults, func(a, b harness.Applied) int { return cmp.Compare(a.Start, b.Start) })
	if ok && f.Err == "" {
		r.DeploySeconds = ptr((f.End - f.Start).Seconds())
	}
	r.setBalance(samples, d, uptime(backends, initial, faults, d))
}
