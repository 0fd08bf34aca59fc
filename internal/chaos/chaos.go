package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/affinityproxy/affinity/internal/harness"
)

const (
	// probeEvery is how often a fresh client asks after recovery whether
	// the victim takes new clients again: the resolution of WholeAfter.
	probeEvery = 50 * time.Millisecond
	// healGrace is how long after the load the probes may keep waiting
	// for the victim, so that a short scenario still sees the pool heal.
	healGrace = 5 * time.Second
	// newClients is how many fresh clients are sent once the load is over,
	// as in the peers' harness.
	newClients = 30
)

// errUnsupported is returned where the faults cannot be injected: process
// groups and SIGSTOP are needed, and only Linux is supported.
var errUnsupported = errors.New("chaos: faults are supported on Linux only")

// Run plays sc and reports what its clients saw. The proxy and the backends
// are stopped before Run returns; an error means the run could not be
// played (a process did not start, a fault could not be applied, ctx
// ended), not that the proxy did badly.
func Run(ctx context.Context, sc Scenario) (res Result, err error) {
	if runtime.GOOS != "linux" {
		return Result{}, errUnsupported
	}
	sc = sc.withDefaults()
	if err := sc.validate(); err != nil {
		return Result{}, err
	}
	dir := sc.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "affinity-chaos-"); err != nil {
			return Result{}, fmt.Errorf("chaos: %w", err)
		}
		defer func() { _ = os.RemoveAll(dir) }()
	}
	c := &harness.Cluster{
		Exe: sc.Binary, Dir: dir, Pool: poolName, Config: sc.configYAML,
		// The reloads are saved files, as an editor saves them: the
		// proxy's own watch of the file applies them.
		Watch: true,
	}
	defer func() { err = errors.Join(err, c.Close()) }()
	if err := c.Start(ctx, sc.Backends); err != nil {
		return Result{}, fmt.Errorf("chaos: %w", err)
	}
	res, err = play(ctx, sc, c)
	if err != nil {
		return Result{}, fmt.Errorf("chaos: %s: %w", sc.Fault, err)
	}
	return res, nil
}

// play places the load's clients, runs the load and the schedule of the
// fault, the recovery and the reloads, waits for the pool to heal, sends
// the fresh clients, and sums it all up.
func play(ctx context.Context, sc Scenario, c *harness.Cluster) (Result, error) {
	victim := harness.BackendName(victimIndex + 1)
	res := Result{Fault: sc.Fault, Victim: victim, NewClients: newClients}
	schedule, err := sc.schedule()
	if err != nil {
		return Result{}, err
	}
	tr := harness.NewTransport(512)
	defer tr.CloseIdleConnections()
	url := "http://" + c.ProxyAddr() + "/"
	l := newLoad(url, sc, tr)

	if err := l.pin(ctx); err != nil {
		return Result{}, err
	}
	lctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	// On every return, stop sending and wait for the requests in flight,
	// which end at once as their context does.
	defer func() {
		cancel()
		wg.Wait()
	}()
	start := time.Now()
	var recs, probes []record
	wg.Go(func() { recs = l.run(lctx, start) })
	apply := func(ctx context.Context, f harness.Fault) error {
		if f.Action == harness.Kill || f.Action == harness.Hang {
			res.PinnedAtFault, res.InFlightAtFault = l.pinnedTo(victim)
		}
		if err := c.Apply(ctx, f); err != nil {
			return err
		}
		if f.Action == harness.Restart || f.Action == harness.Resume {
			pctx, pcancel := context.WithDeadline(lctx, start.Add(sc.Duration+healGrace))
			limit := int((sc.Duration-sc.RecoverAt+healGrace)/probeEvery) + 1
			wg.Go(func() {
				defer pcancel()
				probes = probe(pctx, tr, url, victim, start, probeEvery, limit)
			})
		}
		return nil
	}
	applied := schedule.Run(lctx, harness.WallClock{}, start, apply, c.Settle)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	var recoverAt time.Duration
	for _, a := range applied {
		if a.Err != "" {
			return Result{}, errors.New(a.Err)
		}
		if a.Action == harness.Restart || a.Action == harness.Resume {
			recoverAt = a.Start
		}
	}
	if len(applied) != len(schedule) {
		return Result{}, fmt.Errorf("%d of the %d faults applied before the load ended", len(applied), len(schedule))
	}

	if res.NewOnVictim, err = newcomers(ctx, tr, url, victim, newClients, sc.ClientTimeout); err != nil {
		return Result{}, err
	}
	countFailures(&res, recs)
	res.Moved, res.MovedTwice, res.Returned = countMoves(servedBy(recs, sc.Clients), victim)
	res.WholeAfter = wholeAfter(append(slices.Clip(recs), probes...), victim, recoverAt)
	res.P50, res.P99 = latencies(recs)
	res.Reloads = sc.Reloads
	if sc.Reloads > 0 {
		log, err := os.ReadFile(filepath.Join(c.Dir, "proxy.log"))
		if err != nil {
			return Result{}, fmt.Errorf("proxy log: %w", err)
		}
		res.Reloaded = strings.Count(string(log), "config reloaded")
	}
	return res, nil
}
