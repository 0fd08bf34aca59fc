// Package soak runs `affinity serve` for a long time in front of real
// `affinity backend` processes (internal/harness starts and stops them),
// under a steady open-loop load over keep-alive and new connections with
// cookies (with TLS, over HTTP/1.1 and HTTP/2), while the configuration is
// reloaded and a backend is killed and restarted on a schedule. It samples the proxy's resident memory, open
// descriptors and goroutines (from its /metrics) and the clients' p99
// latency, and reports a leak when any grows past a stated bound after
// the warm-up.
//
// Everything listens on 127.0.0.1, every loop is bounded in count and
// time, and every process a run starts is killed before Run returns.
package soak

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/affinityproxy/affinity/internal/harness"
)

// Scenario describes a run; zero fields take the values.
type Scenario struct {
	Binary string // the affinity executable, for backends and proxy; required
	// Dir receives the config and the processes' logs; empty: a
	// temporary directory, removed when Run returns.
	Dir         string
	Duration    time.Duration // of the load; default 10m
	Rate        int           // requests per second; default 200
	Clients     int           // keep-alive clients, each with a cookie jar; default 20
	SampleEvery time.Duration // default 10s
	ReloadEvery time.Duration // default 10s
	// KillEvery kills a backend (in turn) this often, and restarts it
	// KillEvery/6 later; default 1m.
	KillEvery time.Duration
	// WarmUp is the part of the run whose samples set the bounds;
	// default a fifth of Duration.
	WarmUp time.Duration
	// TLS has the proxy listen with TLS, and half of the keep-alive
	// clients speak HTTP/2 to it, the others HTTP/1.1.
	TLS bool
}

func (sc Scenario) withDefaults() Scenario {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&sc.Duration, 10*time.Minute)
	def(&sc.SampleEvery, 10*time.Second)
	def(&sc.ReloadEvery, 10*time.Second)
	def(&sc.KillEvery, time.Minute)
	def(&sc.WarmUp, sc.Duration/5)
	if sc.Rate == 0 {
		sc.Rate = 200
	}
	if sc.Clients == 0 {
		sc.Clients = 20
	}
	return sc
}

// Sample is what the proxy held at one time of the run.
type Sample struct {
	At         time.Duration // since the load began
	RSS        int64         // resident memory, bytes
	FDs        int           // open descriptors
	Goroutines int
	P99        time.Duration // of the requests answered since the last sample
	Requests   int           // answered since the last sample
	Failed     int           // of those, failed (not 2xx, or no answer)
}

// Result is a run's samples and totals.
type Result struct {
	Samples          []Sample
	Requests, Failed int
	HTTP2            int // requests answered over HTTP/2
	Reloads, Kills   int
	// Leaks says which figure grew past its bound after the warm-up, and
	// how; empty when none did.
	Leaks []string
}

// Bounds a figure may reach after the warm-up, over the most it reached
// during it: room for buffers and pools that fill slowly, not for
// something that grows with every request.
const (
	rssGrowth       = 1.5      // times the warm-up's most
	rssSlack        = 16 << 20 // bytes, on top
	fdSlack         = 64       // descriptors: a backend's connections being redialled
	goroutineGrowth = 1.5
	goroutineSlack  = 64
)

// maxInFlight bounds the load's requests open at once: an open loop
// against a stuck proxy must not grow without bound.
const maxInFlight = 512

// Run plays sc and reports what the proxy held along the way. An error
// means the run could not be played, not that the proxy leaked.
func Run(ctx context.Context, sc Scenario) (res Result, err error) {
	sc = sc.withDefaults()
	if sc.Binary == "" {
		return Result{}, errors.New("soak: Binary is required")
	}
	dir := sc.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "affinity-soak-"); err != nil {
			return Result{}, fmt.Errorf("soak: %w", err)
		}
		defer func() { _ = os.RemoveAll(dir) }()
	}
	c := &harness.Cluster{Exe: sc.Binary, Dir: dir, Pool: "web", Config: configYAML(nil)}
	if sc.TLS {
		files, roots, err := writeCert(dir)
		if err != nil {
			return Result{}, fmt.Errorf("soak: %w", err)
		}
		c.Config = configYAML(files)
		c.TLS = &tls.Config{RootCAs: roots}
	}
	defer func() { err = errors.Join(err, c.Close()) }()
	if err := c.Start(ctx, 3); err != nil {
		return Result{}, fmt.Errorf("soak: %w", err)
	}
	return play(ctx, sc, c)
}

// configYAML renders a cookie pool over the backends with active checks,
// passive ejection and retries, and the admin listener the samples are
// read from; odd revisions weigh the first backend 2, so that each reload
// changes something. tls, when not nil, names the listener's certificate
// and key files.
func configYAML(tls []string) func(p harness.ProxyConfig) string {
	return func(p harness.ProxyConfig) string { return renderConfig(p, tls) }
}

func renderConfig(p harness.ProxyConfig, tls []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Generated by the soak harness.\nlisten: %s\nadmin: %s\n", p.Listen, p.Admin)
	if tls != nil {
		fmt.Fprintf(&b, "tls: {cert: %q, key: %q}\n", tls[0], tls[1])
	}
	b.WriteString("pools:\n  web:\n    balancer: {type: cookie}\n    backends:\n")
	for i, m := range p.Backends {
		w := 1
		if i == 0 {
			w = 1 + p.Revision%2
		}
		fmt.Fprintf(&b, "      - {url: \"http://%s\", name: %s, weight: %d}\n", m.Addr, m.Name, w)
	}
	b.WriteString("    health_check: {path: /healthz, interval: 500ms, timeout: 400ms, rise: 2, fall: 2}\n")
	b.WriteString("    passive: {failures: 2, eject: 1s}\n")
	return b.String()
}

// window gathers the load's answers between two samples.
type window struct {
	mu        sync.Mutex
	latencies []time.Duration
	failed    int
}

func (w *window) add(d time.Duration, ok bool) {
	w.mu.Lock()
	w.latencies = append(w.latencies, d)
	if !ok {
		w.failed++
	}
	w.mu.Unlock()
}

// take empties w, returning its count, failures and p99.
func (w *window) take() (n, failed int, p99 time.Duration) {
	w.mu.Lock()
	l, failed := w.latencies, w.failed
	w.latencies, w.failed = nil, 0
	w.mu.Unlock()
	if len(l) == 0 {
		return 0, failed, 0
	}
	slices.Sort(l)
	return len(l), failed, l[(len(l)*99)/100]
}

func play(ctx context.Context, sc Scenario, c *harness.Cluster) (Result, error) {
	var res Result
	url := "http://" + c.ProxyAddr() + "/"
	keep := harness.NewTransport(sc.Clients)
	fresh := harness.NewTransport(0)
	fresh.DisableKeepAlives = true
	defer keep.CloseIdleConnections()
	var h2 *http.Transport
	if sc.TLS {
		url = "https://" + c.ProxyAddr() + "/"
		for _, tr := range []*http.Transport{keep, fresh} {
			// HTTP/1.1 only: ALPN offers no h2.
			tr.TLSClientConfig = c.TLS.Clone()
			tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
		}
		h2 = harness.NewTransport(sc.Clients)
		h2.TLSClientConfig = c.TLS.Clone()
		h2.ForceAttemptHTTP2 = true
		defer h2.CloseIdleConnections()
	}
	clients := make([]*http.Client, sc.Clients)
	for i := range clients {
		tr := keep
		if h2 != nil && i%2 == 1 {
			tr = h2
		}
		clients[i] = harness.NewClient(tr, 5*time.Second)
	}
	newcomer := &http.Client{Transport: fresh, Timeout: 5 * time.Second}

	lctx, cancel := context.WithTimeout(ctx, sc.Duration)
	defer cancel()
	var w window
	var http2s atomic.Int64
	var wg sync.WaitGroup
	slots := make(chan struct{}, maxInFlight)
	start := time.Now()
	wg.Go(func() {
		tick := time.NewTicker(time.Second / time.Duration(sc.Rate))
		defer tick.Stop()
		for k := 0; ; k++ {
			select {
			case <-lctx.Done():
				return
			case <-tick.C:
			}
			// Every fourth request comes on a new connection, without
			// cookies, as a new visitor; the others from the keep-alive
			// clients in turn.
			cl := newcomer
			if k%4 != 0 {
				cl = clients[k%len(clients)]
			}
			select {
			case slots <- struct{}{}:
			default:
				w.add(0, false) // the proxy holds maxInFlight already
				continue
			}
			wg.Go(func() {
				defer func() { <-slots }()
				d, proto, ok := get(lctx, cl, url)
				if lctx.Err() == nil {
					w.add(d, ok)
					if proto == 2 {
						http2s.Add(1)
					}
				}
			})
		}
	})
	// Reloads and kills, one at a time, as the cluster wants.
	var faultErr error
	wg.Go(func() {
		reload := time.NewTicker(sc.ReloadEvery)
		defer reload.Stop()
		kill := time.NewTicker(sc.KillEvery)
		defer kill.Stop()
		var restart <-chan time.Time
		var victim string
		for {
			var f harness.Fault
			select {
			case <-lctx.Done():
				return
			case <-reload.C:
				f = harness.Fault{Action: harness.Reload}
				res.Reloads++
			case <-kill.C:
				if victim != "" {
					continue
				}
				victim = harness.BackendName(res.Kills%3 + 1)
				f = harness.Fault{Action: harness.Kill, Target: victim}
				restart = time.After(sc.KillEvery / 6)
				res.Kills++
			case <-restart:
				f = harness.Fault{Action: harness.Restart, Target: victim}
				victim, restart = "", nil
			}
			if err := c.Apply(lctx, f); err != nil && lctx.Err() == nil {
				faultErr = err
				cancel()
				return
			}
		}
	})
	admin := &http.Client{Timeout: 5 * time.Second}
	tick := time.NewTicker(sc.SampleEvery)
	defer tick.Stop()
	var sampleErr error
	for sampling := true; sampling; {
		select {
		case <-lctx.Done():
			sampling = false
		case <-tick.C:
			s, err := sample(lctx, admin, "http://"+c.AdminAddr()+"/metrics")
			if err != nil {
				if lctx.Err() == nil {
					sampleErr = err
					cancel()
				}
				continue
			}
			s.At = time.Since(start)
			s.Requests, s.Failed, s.P99 = w.take()
			res.Samples = append(res.Samples, s)
		}
	}
	wg.Wait()
	if err := errors.Join(faultErr, sampleErr, ctx.Err()); err != nil {
		return res, fmt.Errorf("soak: %w", err)
	}
	for _, s := range res.Samples {
		res.Requests += s.Requests
		res.Failed += s.Failed
	}
	res.HTTP2 = int(http2s.Load())
	res.Leaks = leaks(res.Samples, sc.WarmUp)
	return res, nil
}

// get sends a GET and reads its answer: how long it took, the major
// version of HTTP it came over, and ok for a 2xx.
func get(ctx context.Context, c *http.Client, url string) (time.Duration, int, bool) {
	t := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, 0, false
	}
	resp, err := c.Do(req)
	if err != nil {
		return time.Since(t), 0, false
	}
	_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	_ = resp.Body.Close()
	return time.Since(t), resp.ProtoMajor, err == nil && resp.StatusCode/100 == 2
}

// sample reads the proxy's figures from its /metrics.
func sample(ctx context.Context, c *http.Client, url string) (Sample, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return Sample{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return Sample{}, err
	}
	defer resp.Body.Close()
	var s Sample
	found := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		switch name {
		case "process_resident_memory_bytes":
			s.RSS = int64(v)
		case "process_open_fds":
			s.FDs = int(v)
		case "go_goroutines":
			s.Goroutines = int(v)
		default:
			continue
		}
		found++
	}
	if err := sc.Err(); err != nil {
		return Sample{}, err
	}
	if found != 3 {
		return Sample{}, fmt.Errorf("%s: %d of resident memory, descriptors and goroutines found", url, found)
	}
	return s, nil
}

// leaks compares the samples after warmUp with the most of those before.
func leaks(samples []Sample, warmUp time.Duration) []string {
	var base Sample
	after := 0
	for _, s := range samples {
		if s.At <= warmUp {
			base.RSS, base.FDs, base.Goroutines = max(base.RSS, s.RSS), max(base.FDs, s.FDs), max(base.Goroutines, s.Goroutines)
			continue
		}
		after++
	}
	if base.RSS == 0 || after == 0 {
		return []string{"no sample before and after the warm-up: run longer"}
	}
	var out []string
	for _, s := range samples {
		if s.At <= warmUp {
			continue
		}
		if bound := int64(float64(base.RSS)*rssGrowth) + rssSlack; s.RSS > bound {
			out = append(out, fmt.Sprintf("%v: resident memory %d MB, bound %d MB", s.At.Round(time.Second), s.RSS>>20, bound>>20))
		}
		if bound := base.FDs + fdSlack; s.FDs > bound {
			out = append(out, fmt.Sprintf("%v: %d descriptors, bound %d", s.At.Round(time.Second), s.FDs, bound))
		}
		if bound := int(float64(base.Goroutines)*goroutineGrowth) + goroutineSlack; s.Goroutines > bound {
			out = append(out, fmt.Sprintf("%v: %d goroutines, bound %d", s.At.Round(time.Second), s.Goroutines, bound))
		}
	}
	return out
}

// Table prints the samples, one line each, and the totals.
func (r Result) Table() string {
	var b strings.Builder
	b.WriteString("| at | RSS (MB) | fds | goroutines | requests | failed | p99 (ms) |\n|---|---|---|---|---|---|---|\n")
	for _, s := range r.Samples {
		fmt.Fprintf(&b, "| %v | %.1f | %d | %d | %d | %d | %.1f |\n", s.At.Round(time.Second), float64(s.RSS)/(1<<20),
			s.FDs, s.Goroutines, s.Requests, s.Failed, float64(s.P99.Microseconds())/1000)
	}
	fmt.Fprintf(&b, "\n%d requests (%d over HTTP/2), %d failed; %d reloads, %d backend kills\n", r.Requests, r.HTTP2, r.Failed, r.Reloads, r.Kills)
	if len(r.Leaks) == 0 {
		b.WriteString("no growth past the bounds after the warm-up\n")
	}
	for _, l := range r.Leaks {
		b.WriteString("LEAK " + l + "\n")
	}
	return b.String()
}
