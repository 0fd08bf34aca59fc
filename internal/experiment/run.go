// Package experiment runs `affinity experiment`: it puts a number on the
// claims made about sticky sessions and session stores, on real processes.
//
// A run is a matrix of balancers × session stores. Each cell starts its own
// demo backends and proxy as child processes of the affinity binary, plays
// the same open-loop load of virtual shop users through the proxy, applies
// the same scripted faults (kill, hang, add, store down, ...) at the same
// times, and measures what the users saw: sessions lost, users moved,
// latency, errors, load per backend. The processes, the load and the fault
// schedule are package harness's, shared with the chaos tests. The report
// writes the tables, the charts and one finding per claim, all generated
// from the numbers.
package experiment

import (
	"cmp"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/affinityproxy/affinity/internal/deploy"
	"github.com/affinityproxy/affinity/internal/harness"
)

// Options says how to run a Spec; the zero value runs the current binary
// with an embedded Redis and prints nothing.
type Options struct {
	// Executable is the affinity binary whose `backend` and `serve`
	// commands the cells run; empty means the running one.
	Executable string
	// RedisAddr is an external Redis for the redis and cached-redis cells;
	// empty starts an embedded one per cell. An external Redis cannot take
	// store faults, and keeps what earlier cells wrote.
	RedisAddr string
	// Dir receives each cell's proxy config and process logs, under
	// cells/; empty uses a temporary directory removed at the end.
	Dir string
	// Progress receives one line per cell as it ends.
	Progress io.Writer
	// Quick records that the spec is the --quick version, for the report.
	Quick bool
	// Version and Command name the binary and the command line, for the
	// report's reproduction section.
	Version, Command string
}

// Results is a finished run: the contract of results.json.
type Results struct {
	Preset   string       `json:"preset"`
	Title    string       `json:"title"`
	Quick    bool         `json:"quick"`
	Command  string       `json:"command"`
	Started  time.Time    `json:"started"`
	Elapsed  float64      `json:"elapsed_s"`
	Machine  Machine      `json:"machine"`
	Settings Settings     `json:"settings"`
	Cells    []CellResult `json:"cells"`
	// Stopped says why the run ended before its last cell; empty when it
	// ran them all.
	Stopped string `json:"stopped,omitempty"`
	// Findings and ForYou are what the cells say about the spec's claims
	// (see conclude).
	Findings []Finding `json:"findings"`
	ForYou   string    `json:"for_you,omitempty"`
	Spec     Spec      `json:"-"`
}

// Settings are the parameters of a run that every cell shared.
type Settings struct {
	Backends  int     `json:"backends"`
	Users     int     `json:"users"`
	RateRPS   float64 `json:"rate_rps"`
	DurationS float64 `json:"duration_s"`
	Seed      uint64  `json:"seed"`
	Items     [2]int  `json:"items"`
	Churn     float64 `json:"churn"`
	Skew      float64 `json:"skew"`
	Logout    bool    `json:"logout"`
	Replay    bool    `json:"replay"`
	WorkMs    float64 `json:"work_ms"`
	// CheckoutWorkMs is the backends' --checkout-work.
	CheckoutWorkMs float64 `json:"checkout_work_ms"`
	// ResponseTimeoutMs is the proxy's timeouts.response_header.
	ResponseTimeoutMs float64 `json:"response_timeout_ms"`
	// DrainIdleMs and DrainTimeoutMs are a deploy's drain settings; 0
	// without a deploy.
	DrainIdleMs    float64  `json:"drain_idle_ms,omitempty"`
	DrainTimeoutMs float64  `json:"drain_timeout_ms,omitempty"`
	Faults         []string `json:"faults"`
	HealthMs       float64  `json:"health_check_interval_ms"`
	TimeoutMs      float64  `json:"request_timeout_ms"`
	Balancers      []string `json:"balancers"`
	Stores         []string `json:"stores"`
	Variants       []string `json:"variants,omitempty"`
	RedisStore     string   `json:"redis"`
}

// Machine is where the run happened.
type Machine struct {
	CPUs      int    `json:"nproc"`
	CPUModel  string `json:"cpu_model"`
	OS        string `json:"os"`
	Kernel    string `json:"kernel"`
	Go        string `json:"go"`
	Affinity  string `json:"affinity"`
	Redis     string `json:"redis"`
	GoMaxProc int    `json:"gomaxprocs"`
}

// Run runs every cell of s in turn and returns the results. When ctx ends
// (Ctrl-C), the cell in progress is stopped and Run returns the cells done
// so far with ctx's error. Every process a cell started has been killed and
// reaped when Run returns, whatever the outcome.
func Run(ctx context.Context, s Spec, o Options) (*Results, error) {
	if err := Preflight(ctx, s, o); err != nil {
		return nil, err
	}
	sched, err := harness.NewSchedule(s.Faults, s.Backends, s.Duration)
	if err != nil {
		return nil, err
	}
	s.Faults = sched
	// The entries in the form cells are known by; Preflight checked them.
	bals, stores, runs := entries(&s.Balancers, ofBalancer), entries(&s.Stores, ofStore), entries(&s.Variants, ofRun)
	if len(runs) == 0 {
		runs = []choice{{}}
	}
	if o.Executable == "" {
		if o.Executable, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("find the affinity binary: %w", err)
		}
	}
	if o.Dir == "" {
		dir, err := os.MkdirTemp("", "affinity-experiment-")
		if err != nil {
			return nil, fmt.Errorf("work directory: %w", err)
		}
		defer func() { _ = os.RemoveAll(dir) }()
		o.Dir = dir
	}
	res := &Results{
		Preset: s.Name, Title: s.Title, Quick: o.Quick, Command: o.Command,
		Started: time.Now(), Spec: s,
		Machine:  machine(ctx, o),
		Settings: settings(s, o),
	}
	// One secret for every token cell: a token is valid on every backend of
	// a cell, as it must be, and the secret never leaves this run.
	secret := rand.Text()
	for _, bal := range bals {
		for _, store := range stores {
			for _, rn := range runs {
				cs := cellSpec{bal, store, rn}
				cell, err := runCell(ctx, s, o, cs, secret)
				if err != nil {
					err = fmt.Errorf("cell %s: %w", cs, err)
					res.Elapsed, res.Stopped = time.Since(res.Started).Seconds(), err.Error()
					return res, err
				}
				res.Cells = append(res.Cells, cell)
				if o.Progress != nil {
					_, _ = fmt.Fprintf(o.Progress, "[%d/%d] %s\n", len(res.Cells), s.Cells(), cellLine(&cell))
				}
			}
		}
	}
	res.Elapsed = time.Since(res.Started).Seconds()
	return res, nil
}

// Preflight checks, before anything is started or written, what would
// otherwise fail a run part of the way through: the spec, store faults
// asked of a Redis the harness does not own, and an external Redis that
// does not answer.
func Preflight(ctx context.Context, s Spec, o Options) error {
	if err := s.Check(); err != nil {
		return err
	}
	if o.RedisAddr == "" {
		return nil
	}
	for _, f := range s.Faults {
		if f.Action == harness.StoreDown || f.Action == harness.StoreUp {
			return fmt.Errorf("%w: %q: %w", ErrBadSpec, f, ErrExternalStore)
		}
	}
	if slices.ContainsFunc(s.Stores, needsRedis) {
		if _, err := redisInfo(ctx, o.RedisAddr); err != nil {
			return fmt.Errorf("--redis-addr: %w", err)
		}
	}
	return nil
}

// loadStartDelay separates the end of a cell's setup from the first arrival,
// so that the first slots are not already late.
const loadStartDelay = 50 * time.Millisecond

// entries parses the spec's list of entries of kind k, which Check has
// checked, and rewrites it in the form cells are known by.
func entries(list *[]string, k entryKind) []choice {
	*list = slices.Clone(*list)
	out := make([]choice, len(*list))
	for i, e := range *list {
		out[i], _ = parseChoice(e, k)
		(*list)[i] = out[i].String()
	}
	return out
}

// cellSpec is a cell of the matrix: its balancer, store and run entries.
type cellSpec struct{ bal, store, run choice }

// String names the cell: "cookie × redis", "cookie × redis × mode=drain".
func (cs cellSpec) String() string {
	s := cs.bal.String() + " × " + cs.store.String()
	if r := cs.run.String(); r != "" {
		s += " × " + r
	}
	return s
}

// procs is the processes of one cell: the harness's backends and proxy, and
// the Redis they may share.
type procs struct {
	*harness.Cluster
	redis *redisStore // nil unless the store needs Redis
	// spec, mode and start are what a deploy fault needs: the drain's
	// settings, how it takes backends out, and the start of the load for
	// its times; steps is what it did.
	spec  *Spec
	mode  string
	start time.Time
	steps []deploy.Step
}

// apply carries out one fault: the store's on the cell's Redis (nothing
// for a store the backends do not keep in Redis), the others on the
// cluster.
func (c *procs) apply(ctx context.Context, f harness.Fault) error {
	switch f.Action {
	case harness.StoreDown, harness.StoreUp:
		if c.redis == nil {
			return nil // memory and token cells have no store to stop
		}
		if f.Action == harness.StoreDown {
			return c.redis.down()
		}
		return c.redis.up()
	case harness.Deploy:
		return c.rollout(ctx)
	}
	return c.Cluster.Apply(ctx, f)
}

// runCell starts the processes of one cell, plays the load and the faults,
// and measures the outcome.
func runCell(ctx context.Context, s Spec, o Options, cs cellSpec, secret string) (CellResult, error) {
	bal, store := cs.bal, cs.store
	dir := filepath.Join(o.Dir, "cells", strings.NewReplacer(" × ", "_", " ", "_").Replace(cs.String()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return CellResult{}, fmt.Errorf("cell directory: %w", err)
	}
	c := &procs{spec: &s, mode: cs.run.opts["mode"]}
	if needsRedis(store.String()) {
		r, err := startRedis(ctx, o.RedisAddr)
		if err != nil {
			return CellResult{}, err
		}
		c.redis = r
		defer r.close()
	}
	c.Cluster = &harness.Cluster{
		Exe: o.Executable, Dir: dir, Pool: poolName,
		BackendFlags: backendFlags(store, &s, c.redis, secret),
		ProxyFlags:   proxyFlags(cs.run),
		Config: func(p harness.ProxyConfig) string {
			return proxyConfig(p, bal, store.String(), s.responseTimeout())
		},
	}
	defer func() { _ = c.Close() }()
	if err := c.Start(ctx, s.Backends); err != nil {
		return CellResult{}, err
	}

	tr := harness.NewTransport(s.Users)
	defer tr.CloseIdleConnections()
	gen, err := newGenerator(Load{
		Users: s.Users, Rate: s.Rate, Duration: s.Duration, Seed: s.Seed, Skew: s.Skew, Logout: s.Logout, Replay: s.Replay,
		Client: cs.run.opts["client"], MinItems: s.MinItems, MaxItems: s.MaxItems, Churn: s.Churn, Timeout: requestTimeout,
	}, "http://"+c.ProxyAddr(), tr)
	if err != nil {
		return CellResult{}, err
	}

	start := time.Now().Add(loadStartDelay)
	c.start = start
	fctx, stopFaults := context.WithCancel(ctx)
	defer stopFaults()
	applied := make(chan []harness.Applied, 1)
	go func() { applied <- s.Faults.Run(fctx, harness.WallClock{}, start, c.apply, c.Settle) }()
	gen.run(ctx, harness.WallClock{}, start)
	// A fault still being applied when the load ends (a backend starting,
	// a reload not yet seen, a deploy) is cut short; one not yet due never
	// happens.
	stopFaults()
	faults := <-applied
	if err := ctx.Err(); err != nil {
		return CellResult{}, err
	}

	scraped := scrape(ctx, c.Cluster)
	var names []string
	for _, b := range c.Backends() {
		names = append(names, b.Name)
	}
	r := summarize(bal.name, store.name, gen.rec.samples, gen.skipped, s.Duration, names, s.Backends, faults)
	for i := range r.Backends {
		if m, ok := scraped[r.Backends[i].Name]; ok {
			r.Backends[i].Sessions, r.Backends[i].RSSBytes, r.Backends[i].CacheHits = m.Sessions, m.RSSBytes, m.CacheHits
			r.Orders += m.orders
			r.DuplicateOrders += m.duplicates
		}
	}
	r.Variant = variantOf(bal, store, cs.run)
	r.ProxyReloads = c.Reloads()
	deployFigures(&r, c.steps, gen.rec.samples, s.Duration, names, s.Backends)
	if keyed(bal.name) {
		ch, err := newChooser(bal, store.String())
		if err != nil {
			return CellResult{}, err
		}
		predict(&r, ch, gen.rec.samples, names, s.Backends)
	}
	return r, nil
}

// proxyFlags are the flags of a cell's `affinity serve`: with retry=all,
// the hidden one that retries every method.
func proxyFlags(run choice) []string {
	if run.opts["retry"] == retryAll {
		return []string{"--unsafe-retry-every-method"}
	}
	return nil
}

// cellLine is the one-line summary of a cell printed as the run goes.
func cellLine(c *CellResult) string {
	moved := "-"
	if c.UsersMovedPct != nil {
		moved = fmt.Sprintf("%.0f%%", *c.UsersMovedPct)
	}
	name := fmt.Sprintf("%-15s × %-12s", c.BalancerEntry(), c.StoreEntry())
	if r := c.RunEntry(); r != "" {
		name += " × " + fmt.Sprintf("%-22s", r)
	}
	return fmt.Sprintf("%s %6d req %5.1f%% err  lost %5.1f%%  moved %4s  imbalance %4.2f  p50 %6.2f ms  p99 %7.2f ms  %5.0f rps",
		name, c.Requests, pct(c.Errors, c.Requests), c.SessionsLostPct, moved, c.Imbalance, c.P50Ms, c.P99Ms, c.ThroughputRPS)
}

// settings records the parameters of s for the report.
func settings(s Spec, o Options) Settings {
	st := Settings{
		Backends: s.Backends, Users: s.Users, RateRPS: s.Rate, DurationS: s.Duration.Seconds(), Seed: s.Seed,
		Items: [2]int{s.MinItems, s.MaxItems}, Churn: s.Churn, Skew: s.Skew, Logout: s.Logout, WorkMs: ms(s.Work),
		HealthMs: ms(healthInterval), TimeoutMs: ms(requestTimeout),
		Balancers: s.Balancers, Stores: s.Stores, Variants: s.Variants, RedisStore: "embedded",
		CheckoutWorkMs: ms(s.CheckoutWork), ResponseTimeoutMs: ms(s.responseTimeout()), Replay: s.Replay,
	}
	if slices.ContainsFunc(s.Faults, func(f harness.Fault) bool { return f.Action == harness.Deploy }) {
		st.DrainIdleMs, st.DrainTimeoutMs = ms(s.drainIdle()), ms(s.drainTimeout())
	}
	if o.RedisAddr != "" {
		st.RedisStore = o.RedisAddr
	}
	for _, f := range s.Faults {
		st.Faults = append(st.Faults, f.String())
	}
	return st
}

// machine describes the host, best effort: a field it cannot read says so.
func machine(ctx context.Context, o Options) Machine {
	m := Machine{
		CPUs: runtime.NumCPU(), GoMaxProc: runtime.GOMAXPROCS(0),
		OS: runtime.GOOS + "/" + runtime.GOARCH, Go: runtime.Version(),
		CPUModel: "unknown", Kernel: "unknown", Affinity: cmp.Or(o.Version, "(unknown)"), Redis: embeddedVersion(),
	}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		m.CPUModel = cpuModel(string(data))
	}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(data))
	}
	if o.RedisAddr != "" {
		if v, err := redisInfo(ctx, o.RedisAddr); err == nil {
			m.Redis = v + " at " + o.RedisAddr
		}
	}
	return m
}

// cpuModel returns the first "model name" of /proc/cpuinfo.
func cpuModel(cpuinfo string) string {
	for line := range strings.SplitSeq(cpuinfo, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}
