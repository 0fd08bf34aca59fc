// Command perf measures a built affinity binary as a process, on 127.0.0.1
// only and bounded in time:
//
//	go run ./internal/perf profile    -bin bin/affinity -out cmd/affinity/default.pgo
//	go run ./internal/perf instr      -bin bin/affinity
//	go run ./internal/perf idle-conns -bin bin/affinity -conns 10000
//	go run ./internal/perf cpu        -bin bin/affinity
//	go run ./internal/perf h2spec     -bin bin/affinity -h2spec bin/h2spec
//	go run ./internal/perf stray      -bin bin/affinity -clients 20
//
// profile drives the proxy with a representative load (round-robin and
// cookie-sticky requests, new clients and returning ones) and saves its CPU
// profile, which `go build` then uses for profile-guided optimisation
// (`make pgo`). instr counts the instructions the proxy runs per request
// under valgrind, for a few ways of using it (`make bench-instr`).
// idle-conns holds many idle keep-alive client connections
// open to the proxy and reports its resident memory before and after
// (`make bench-conns`). Those three start three fixed-response backends in
// this process and the proxy as a child process. cpu measures the CPU time
// per request of affinity beside the peer harness's bare Go proxy and
// HAProxy, with the harness's own backends and pinning (`make bench-cpu`).
// h2spec runs the h2spec conformance suite against the proxy's TLS listener
// over the same three backends, and reports the cases passed and failed
// (`make conformance`). stray has a backend send complete responses no
// request asked for, a moment after its answers, and counts the clients
// that received one, through the proxy, through http.Transport and
// through HAProxy, classed by whether the next request was already out
// when the stray came (see stray.go).
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/affinityproxy/affinity/internal/loopback"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// startTimeout bounds how long the proxy may take to become ready.
const startTimeout = 10 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "perf: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: perf profile|instr|idle-conns|cpu|h2spec|stray [flags]")
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	bin := fs.String("bin", "bin/affinity", "the affinity binary to run")
	switch args[0] {
	case "profile":
		o := profileOptions{}
		fs.StringVar(&o.out, "out", "cmd/affinity/default.pgo", "where to write the CPU profile")
		fs.DurationVar(&o.duration, "duration", 20*time.Second, "how long to profile under load")
		fs.IntVar(&o.clients, "clients", 50, "concurrent clients")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return profile(ctx, *bin, o, out)
	case "instr":
		o := instrOptions{}
		fs.IntVar(&o.warm, "warm", 500, "requests of the short run")
		fs.IntVar(&o.requests, "requests", 3000, "requests of the long run")
		fs.IntVar(&o.rounds, "rounds", 3, "rounds over the targets")
		fs.IntVar(&o.clients, "clients", 10, "concurrent clients")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return instr(ctx, *bin, o, out)
	case "idle-conns":
		o := idleOptions{}
		fs.IntVar(&o.conns, "conns", 10000, "idle client connections to hold")
		fs.DurationVar(&o.settle, "settle", 3*time.Second, "how long to wait for memory to settle")
		fs.DurationVar(&o.hold, "hold", 0, "how long to keep the connections open after reporting, to inspect the proxy")
		fs.DurationVar(&o.parkAfter, "park-after", 0, "the proxy's server.park_after; 0 leaves its default")
		fs.DurationVar(&o.release, "release", 20*time.Second, "how long to let the runtime return the memory parked connections freed")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return idleConns(ctx, *bin, o, out)
	case "h2spec":
		o := h2specOptions{}
		fs.StringVar(&o.h2spec, "h2spec", "bin/h2spec", "the h2spec binary (make conformance builds it)")
		fs.StringVar(&o.cert, "cert", "testdata/tls/cert.pem", "the proxy's certificate")
		fs.StringVar(&o.key, "key", "testdata/tls/key.pem", "the proxy's key")
		fs.IntVar(&o.timeout, "timeout", 2, "seconds h2spec waits for each answer")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return h2specRun(ctx, *bin, o, out)
	case "stray":
		o := strayOptions{}
		fs.IntVar(&o.clients, "clients", 20, "concurrent clients, each on a connection of its own")
		fs.IntVar(&o.requests, "requests", 100, "requests each client sends")
		fs.Float64Var(&o.share, "share", 0.3, "share of answers the backend follows with a stray response")
		fs.DurationVar(&o.maxDelay, "max-delay", 100*time.Millisecond, "a stray comes 0 to this long after its answer")
		fs.StringVar(&o.haproxy, "haproxy", "haproxy", "the haproxy binary, measured beside the proxy when found")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return stray(ctx, *bin, o, out)
	case "cpu":
		o := cpuOptions{}
		fs.StringVar(&o.peers, "peers", "../shared/bench", "the peer harness's directory, with naive/ and peers/")
		fs.StringVar(&o.configs, "configs", "examples/bench", "the directory of affinity's configs for the harness")
		fs.IntVar(&o.rounds, "rounds", 5, "rounds over the targets")
		fs.DurationVar(&o.dur, "dur", 5*time.Second, "how long wrk runs against each target in a round")
		fs.IntVar(&o.conns, "conns", 50, "wrk's connections")
		fs.StringVar(&o.env, "env", "", "NAME=VALUE: also run the round-robin proxy with this in its environment (GOGC=100, say), to measure a runtime setting side by side")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return cpu(ctx, *bin, o, out)
	}
	return fmt.Errorf("unknown command %q: want profile, instr, idle-conns, cpu, h2spec or stray", args[0])
}

// backends serves three fixed responses, as the peer harness's backends do,
// each naming itself in its body.
type backends struct {
	srvs []*http.Server
	urls []string
	wg   sync.WaitGroup
}

// startBackends starts three backends; each answers page, or its own name
// when page is empty.
func startBackends(page string) (*backends, error) {
	bs := &backends{}
	for _, name := range []string{"b1", "b2", "b3"} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			bs.close()
			return nil, fmt.Errorf("backend %s: %w", name, err)
		}
		body := []byte(cmp.Or(page, name))
		srv := &http.Server{
			Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("X-Served-By", name)
				_, _ = w.Write(body)
			}),
			ReadHeaderTimeout: 10 * time.Second,
		}
		bs.srvs = append(bs.srvs, srv)
		bs.urls = append(bs.urls, "http://"+ln.Addr().String())
		bs.wg.Go(func() { _ = srv.Serve(ln) })
	}
	return bs, nil
}

func (bs *backends) close() {
	for _, s := range bs.srvs {
		_ = s.Close()
	}
	bs.wg.Wait()
}

// proxy is a running affinity serve.
type proxy struct {
	cmd    *exec.Cmd
	addr   string // the proxied listener
	admin  string // the admin listener
	log    *testutil.LockedBuffer
	exited chan struct{}
	slow   time.Duration // proxyOptions.slow
}

// proxyConfig is the proxy's configuration: requests under /sticky/ go to a
// cookie pool, the others to a round-robin one, over the same backends;
// o.access turns the access log on, o.parkAfter sets server.park_after,
// o.cert and o.key make the listener speak TLS.
func proxyConfig(listen, admin string, backendURLs []string, o proxyOptions) string {
	var b strings.Builder
	fmt.Fprintf(&b, "listen: %s\nadmin: {listen: %s, pprof: true}\n", listen, admin)
	if o.access {
		b.WriteString("log: {access: true}\n")
	}
	if o.parkAfter > 0 {
		fmt.Fprintf(&b, "server: {park_after: %s}\n", o.parkAfter)
	}
	if o.cert != "" {
		fmt.Fprintf(&b, "tls: {cert: %q, key: %q}\n", o.cert, o.key)
	}
	b.WriteString("routes:\n  - {match: {path: /sticky/}, pool: sticky}\n  - {pool: web}\npools:\n")
	for _, pool := range []string{"web: {balancer: {type: round-robin}", "sticky: {balancer: {type: cookie}"} {
		fmt.Fprintf(&b, "  %s, backends: [", pool)
		for i, u := range backendURLs {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "{url: %q, name: b%d}", u, i+1)
		}
		b.WriteString("]}\n")
	}
	return b.String()
}

// start starts the backends and the proxy over them; stop ends both.
func start(ctx context.Context, bin string, o proxyOptions) (p *proxy, stop func(), err error) {
	bs, err := startBackends("")
	if err != nil {
		return nil, nil, err
	}
	if p, err = startProxy(ctx, bin, bs, o); err != nil {
		bs.close()
		return nil, nil, err
	}
	return p, func() { p.stop(); bs.close() }, nil
}

// proxyOptions change how startProxy runs the proxy.
type proxyOptions struct {
	access    bool          // the access log on, at info level
	parkAfter time.Duration // server.park_after; 0 leaves the default
	cert, key string        // tls.cert and tls.key; none serves plain HTTP
	wrap      []string      // a command the proxy runs under, such as valgrind
	// slow is the factor by which wrap slows the proxy, applied to the
	// time it is given to start and stop; 0 counts as 1.
	slow time.Duration
}

// startProxy runs bin serve over bs with the admin listener and pprof on,
// and waits until it is ready.
func startProxy(ctx context.Context, bin string, bs *backends, o proxyOptions) (*proxy, error) {
	addrs, err := loopback.FreeAddrs(2)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "affinity-perf")
	if err != nil {
		return nil, err
	}
	defer func() { _ = os.RemoveAll(dir) }() // the proxy has read it once ready
	file := filepath.Join(dir, "affinity.yaml")
	if err := os.WriteFile(file, []byte(proxyConfig(addrs[0], addrs[1], bs.urls, o)), 0o600); err != nil {
		return nil, err
	}
	p := &proxy{addr: addrs[0], admin: addrs[1], log: &testutil.LockedBuffer{}, exited: make(chan struct{}), slow: max(o.slow, 1)}
	level := "warn"
	if o.access {
		level = "info"
	}
	args := append(slices.Clone(o.wrap), bin, "serve", "-c", file, "--watch=false", "--log-level", level)
	p.cmd = exec.CommandContext(ctx, args[0], args[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.WaitDelay = 5 * time.Second * p.slow
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	if err := p.waitReady(); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// waitReady polls the admin listener's /readyz until it answers 200.
func (p *proxy) waitReady() error {
	c := &http.Client{Timeout: time.Second}
	defer c.CloseIdleConnections()
	deadline := time.Now().Add(startTimeout * p.slow)
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			return fmt.Errorf("proxy exited: %s", p.log.String())
		default:
		}
		if res, err := c.Get("http://" + p.admin + "/readyz"); err == nil {
			_ = res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("proxy not ready after %v: %s", startTimeout*p.slow, p.log.String())
}

// stop ends the proxy with SIGTERM, then SIGKILL if it lingers.
func (p *proxy) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second * p.slow):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}
