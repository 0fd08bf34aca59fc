package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// instrOptions configure instr.
type instrOptions struct {
	warm, requests int // requests of the short run and of the long one
	rounds         int
	clients        int
}

// instrTarget is one way of using the proxy that instr measures.
type instrTarget struct {
	name   string
	path   string // "/" goes to the round-robin pool, "/sticky/" to the cookie one
	keep   bool   // clients send back the cookie they were given
	access bool   // the access log on
	body   int    // bytes of a POST body; 0: a GET
}

var instrTargets = []instrTarget{
	{name: "round-robin", path: "/"},
	{name: "cookie, new clients", path: "/sticky/"},
	{name: "cookie, returning clients", path: "/sticky/", keep: true},
	{name: "round-robin + access log", path: "/", access: true},
	{name: "round-robin, POST of 1 KiB", path: "/", body: 1 << 10},
}

// valgrindSlowdown is about how much slower the proxy runs under
// cachegrind without its cache simulation.
const valgrindSlowdown = 20

// instr counts the instructions the proxy runs per request, in user space,
// under valgrind's cachegrind: the proxy serves o.warm requests in one run
// and o.requests in another, and the difference of their totals over the
// difference of their requests is what a request costs, without the start
// and the stop. Unlike a throughput or a CPU time, the count hardly moves
// with what else the machine is doing, so two targets compare to a percent
// where throughput on a shared machine varies by ten. What it does not see
// is the kernel's share: the system calls, the same for every target.
func instr(ctx context.Context, bin string, o instrOptions, out io.Writer) error {
	if o.warm < 1 || o.requests <= o.warm || o.rounds < 1 || o.clients < 1 {
		return errors.New("instr: want -warm of at least 1, -requests above it, -rounds and -clients of at least 1")
	}
	vg, err := exec.LookPath("valgrind")
	if err != nil {
		return fmt.Errorf("instr needs valgrind (Debian: apt-get install valgrind): %w", err)
	}
	bs, err := startBackends("")
	if err != nil {
		return err
	}
	defer bs.close()
	per := make([][]float64, len(instrTargets))
	for range o.rounds {
		for i, t := range instrTargets {
			var totals [2]int64
			for j, n := range []int{o.warm, o.requests} {
				if totals[j], err = countRun(ctx, vg, bin, bs, t, n, o.clients); err != nil {
					return fmt.Errorf("%s, %d requests: %w", t.name, n, err)
				}
			}
			per[i] = append(per[i], float64(totals[1]-totals[0])/float64(o.requests-o.warm))
		}
	}
	fmt.Fprintf(out, "user-space instructions per request (cachegrind), median of %d rounds of %d - %d requests from %d clients\n\n",
		o.rounds, o.requests, o.warm, o.clients)
	fmt.Fprintln(out, "| target | instructions/request | min-max | vs round-robin |")
	fmt.Fprintln(out, "|---|---|---|---|")
	base := median(per[0])
	for i, t := range instrTargets {
		m := median(per[i])
		fmt.Fprintf(out, "| %s | %.0f | %.0f-%.0f | %.3f |\n", t.name, m, slices.Min(per[i]), slices.Max(per[i]), m/base)
	}
	return nil
}

// countRun starts the proxy under cachegrind, sends it n requests of
// target t, stops it and returns the instructions it ran in all.
func countRun(ctx context.Context, vg, bin string, bs *backends, t instrTarget, n, clients int) (int64, error) {
	p, err := startProxy(ctx, bin, bs, proxyOptions{
		access: t.access,
		// Without asynchronous preemption the runtime sends itself no
		// signals, which valgrind's tools handle poorly; without RDTSCP,
		// which the runtime reads the clock with where the CPU has it,
		// and which the valgrind of Debian 12 cannot decode on some
		// CPUs (AMD EPYC): the proxy dies of SIGILL. One thread, as the
		// peer harness runs the proxy.
		wrap: []string{"env", "GODEBUG=asyncpreemptoff=1,cpu.rdtscp=off", "GOMAXPROCS=1",
			vg, "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"},
		slow: valgrindSlowdown,
	})
	if err != nil {
		return 0, err
	}
	err = send(ctx, p.addr, t, n, clients)
	p.stop()
	if err != nil {
		return 0, err
	}
	return instructions(p.log.String())
}

// send sends n requests of target t to addr from clients connections.
func send(ctx context.Context, addr string, t instrTarget, n, clients int) error {
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: clients, DisableCompression: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	var (
		left  atomic.Int64
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	left.Store(int64(n))
	method, payload := http.MethodGet, []byte(nil)
	if t.body > 0 {
		method, payload = http.MethodPost, bytes.Repeat([]byte("b"), t.body)
	}
	for range clients {
		wg.Go(func() {
			var cookie string
			for left.Add(-1) >= 0 {
				var body io.Reader
				if payload != nil {
					body = bytes.NewReader(payload)
				}
				req, _ := http.NewRequestWithContext(ctx, method, "http://"+addr+t.path, body)
				if cookie != "" {
					req.Header.Set("Cookie", cookie)
				}
				res, err := c.Do(req)
				if err == nil {
					_, err = io.Copy(io.Discard, res.Body)
					_ = res.Body.Close()
					if err == nil && res.StatusCode != http.StatusOK {
						err = fmt.Errorf("%s %s: %s", method, t.path, res.Status)
					}
				}
				if err != nil {
					once.Do(func() { first = err })
					return
				}
				if t.keep && cookie == "" {
					for _, ck := range res.Cookies() {
						cookie = ck.Name + "=" + ck.Value
					}
				}
			}
		})
	}
	wg.Wait()
	return first
}

// refsLine is cachegrind's summary of the instructions a program ran.
var refsLine = regexp.MustCompile(`I\s+refs:\s+([0-9,]+)`)

// instructions reads the instruction count from cachegrind's output.
func instructions(log string) (int64, error) {
	m := refsLine.FindStringSubmatch(log)
	if m == nil {
		return 0, fmt.Errorf("no instruction count in the output of valgrind: %.2000s", log)
	}
	return strconv.ParseInt(strings.ReplaceAll(m[1], ",", ""), 10, 64)
}

func median(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
