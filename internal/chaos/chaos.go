package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/affinityproxy/affinity/internal/loopback"
)

const (
	// readyTimeout bounds how long a process may take to serve once started.
	readyTimeout = 10 * time.Second
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

// Run plays sc and reports what its clients saw. The proxy and the backends
// are stopped before Run returns; an error means the run could not be
// played (a process did not start, ctx ended), not that the proxy did badly.
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
	h := &harness{sc: sc, dir: dir, tr: newTransport(), backends: make([]*proc, sc.Backends)}
	defer func() { err = errors.Join(err, h.stopAll()) }()
	if err := h.start(ctx); err != nil {
		return Result{}, fmt.Errorf("chaos: %w", err)
	}
	res, err = h.play(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("chaos: %s: %w", sc.Fault, err)
	}
	return res, nil
}

// harness is one run's processes and the client side that drives them.
type harness struct {
	sc    Scenario
	dir   string
	tr    *http.Transport // shared by every client of the run
	url   string          // the proxy's
	addrs []string        // the backends', in config order
	cfg   string          // path of the proxy's config file
	addr  string          // the proxy's listen address
	proxy *proc

	backends []*proc // the current process of each backend
	procs    []*proc // every process started, to stop them all
}

// start starts the backends, then the proxy over them, and waits until the
// proxy sends new clients to every backend.
func (h *harness) start(ctx context.Context) error {
	addrs, err := loopback.FreeAddrs(h.sc.Backends + 1)
	if err != nil {
		return err
	}
	h.addr, h.addrs = addrs[0], addrs[1:]
	h.url = "http://" + h.addr + "/"
	for i := range h.addrs {
		if err := h.startBackend(ctx, i); err != nil {
			return err
		}
	}
	h.cfg = filepath.Join(h.dir, "affinity.yaml")
	if err := os.WriteFile(h.cfg, []byte(h.sc.configYAML(h.addr, h.addrs, 1)), 0o644); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	p, err := h.startProc(ctx, "proxy", "serve", "-c", h.cfg)
	if err != nil {
		return err
	}
	h.proxy = p
	// Every backend having answered a new client proves the proxy listens,
	// routes, and starts with the whole pool in rotation.
	seen := make(map[string]bool)
	c := &http.Client{Transport: h.tr, Timeout: time.Second}
	return waitReady(ctx, p, readyTimeout, func(ctx context.Context) error {
		r := send(ctx, c, h.url, http.MethodGet, time.Now())
		if r.fail != "" {
			return fmt.Errorf("GET %s: %s", h.url, r.fail)
		}
		seen[r.backend] = true
		if len(seen) < len(h.addrs) {
			return fmt.Errorf("%d of %d backends seen", len(seen), len(h.addrs))
		}
		return nil
	})
}

// startProc starts the affinity binary with args, logging to a file of the
// run's directory named after the process and its rank among the run's.
func (h *harness) startProc(ctx context.Context, name string, args ...string) (*proc, error) {
	log := filepath.Join(h.dir, fmt.Sprintf("%02d-%s.log", len(h.procs)+1, name))
	p, err := startProc(ctx, name, h.sc.Binary, log, args...)
	if err != nil {
		return nil, err
	}
	h.procs = append(h.procs, p)
	return p, nil
}

// startBackend starts backend i on its address and waits until it answers
// its health check.
func (h *harness) startBackend(ctx context.Context, i int) error {
	name := backendName(i)
	p, err := h.startProc(ctx, name, "backend", "--listen", h.addrs[i], "--name", name)
	if err != nil {
		return err
	}
	h.backends[i] = p
	c := &http.Client{Transport: h.tr, Timeout: time.Second}
	healthz := "http://" + h.addrs[i] + "/healthz"
	return waitReady(ctx, p, readyTimeout, func(ctx context.Context) error {
		return getOK(ctx, c, healthz)
	})
}

// play runs the load, injects the fault and the recovery on time, waits for
// the pool to heal, sends the fresh clients, and sums it all up.
func (h *harness) play(ctx context.Context) (Result, error) {
	sc := h.sc
	victim := backendName(victimIndex)
	res := Result{Fault: sc.Fault, Victim: victim, NewClients: newClients}
	l, err := newLoad(h.url, sc.Clients, h.tr, sc.ClientTimeout)
	if err != nil {
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
	wg.Go(func() { recs = l.run(lctx, sc, start) })
	var rewriteErr error
	if sc.Reloads > 0 {
		wg.Go(func() { rewriteErr = h.rewrite(lctx, start) })
	}

	if err := sleepUntil(ctx, start.Add(sc.FaultAt)); err != nil {
		return Result{}, err
	}
	res.PinnedAtFault, res.InFlightAtFault = l.pinnedTo(victim)
	if err := h.inject(); err != nil {
		return Result{}, err
	}
	if err := sleepUntil(ctx, start.Add(sc.RecoverAt)); err != nil {
		return Result{}, err
	}
	recoverAt := time.Since(start)
	if err := h.recover(ctx); err != nil {
		return Result{}, err
	}
	pctx, pcancel := context.WithDeadline(lctx, start.Add(sc.Duration+healGrace))
	defer pcancel()
	limit := int((sc.Duration-sc.RecoverAt+healGrace)/probeEvery) + 1
	wg.Go(func() { probes = probe(pctx, h.tr, h.url, victim, start, probeEvery, limit) })
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	if rewriteErr != nil {
		return Result{}, rewriteErr
	}

	if res.NewOnVictim, err = newcomers(ctx, h.tr, h.url, victim, newClients, sc.ClientTimeout); err != nil {
		return Result{}, err
	}
	countFailures(&res, recs)
	res.Moved, res.MovedTwice, res.Returned = countMoves(servedBy(recs, sc.Clients), victim)
	res.WholeAfter = wholeAfter(append(slices.Clip(recs), probes...), victim, recoverAt)
	res.P50, res.P99 = latencies(recs)
	res.Reloads = sc.Reloads
	if sc.Reloads > 0 {
		log, err := os.ReadFile(h.proxy.log)
		if err != nil {
			return Result{}, fmt.Errorf("proxy log: %w", err)
		}
		res.Reloaded = strings.Count(string(log), "config reloaded")
	}
	return res, nil
}

// rewrite saves the proxy's config Reloads times, spread over the load,
// alternating the first backend's weight between 2 and 1. Each is written
// beside the file and renamed over it, so that the proxy never reads half
// of one. It stops early, without error, when ctx ends.
func (h *harness) rewrite(ctx context.Context, start time.Time) error {
	tmp := h.cfg + ".tmp"
	for i := 1; i <= h.sc.Reloads; i++ {
		if sleepUntil(ctx, start.Add(time.Duration(i)*h.sc.reloadGap())) != nil {
			return nil
		}
		cfg := h.sc.configYAML(h.addr, h.addrs, 1+i%2)
		if err := os.WriteFile(tmp, []byte(cfg), 0o644); err != nil {
			return fmt.Errorf("reload %d: %w", i, err)
		}
		if err := os.Rename(tmp, h.cfg); err != nil {
			return fmt.Errorf("reload %d: %w", i, err)
		}
	}
	return nil
}

// inject strikes the victim with the scenario's fault.
func (h *harness) inject() error {
	p := h.backends[victimIndex]
	if h.sc.Fault == FaultHang {
		return p.signal(sigStop)
	}
	if err := p.signal(sigKill); err != nil {
		return err
	}
	// Its port must be free before the restart can take it.
	return p.wait()
}

// recover undoes the fault: a new process on the killed one's port, or
// SIGCONT to the stopped one.
func (h *harness) recover(ctx context.Context) error {
	if h.sc.Fault == FaultHang {
		return h.backends[victimIndex].signal(sigCont)
	}
	return h.startBackend(ctx, victimIndex)
}

// stopAll kills every process the run started and waits for each, and
// closes the clients' idle connections.
func (h *harness) stopAll() error {
	var errs []error
	for _, p := range h.procs {
		errs = append(errs, p.stop())
	}
	h.tr.CloseIdleConnections()
	return errors.Join(errs...)
}

// sleepUntil waits until t or until ctx ends, whichever is first.
func sleepUntil(ctx context.Context, t time.Time) error {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}

// getOK fails unless a GET of url answers 200.
func getOK(ctx context.Context, c *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
	}
	return nil
}
