package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// cpu runs the proxies of the peer harness (../shared/bench/peers.sh) as
// it does, each pinned to CPU 1 with one thread, wrk and its nginx
// backends on CPU 0, in interleaved rounds, and reads from /proc the CPU
// time each proxy spent, in user space and in the kernel, over the
// requests wrk counted. A saturated core's throughput is one over its CPU
// time per request; the split shows what is a proxy's own work and what
// the kernel's TCP over loopback costs every proxy alike.
func cpu(ctx context.Context, bin string, o cpuOptions, out io.Writer) error {
	if o.env != "" {
		if name, _, ok := strings.Cut(o.env, "="); !ok || name == "" {
			return fmt.Errorf("-env %q: want NAME=VALUE", o.env)
		}
	}
	for _, tool := range []string{"taskset", "wrk", "nginx"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("cpu needs %s (make bench-peers installs wrk and nginx): %w", tool, err)
		}
	}
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "affinity-cpu")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	naive := filepath.Join(dir, "naive")
	build := exec.CommandContext(ctx, "go", "build", "-o", naive, ".")
	build.Dir = filepath.Join(o.peers, "naive")
	if msg, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building the bare proxy in %s: %v: %s", build.Dir, err, msg)
	}
	backendsConf, err := filepath.Abs(filepath.Join(o.peers, "peers", "backends.conf"))
	if err != nil {
		return err
	}
	if msg, err := exec.CommandContext(ctx, "taskset", "-c", "0", "nginx", "-c", backendsConf).CombinedOutput(); err != nil {
		return fmt.Errorf("starting the nginx backends: %v: %s", err, msg)
	}
	defer func() { _ = exec.Command("nginx", "-c", backendsConf, "-s", "stop").Run() }()

	const backends = "http://127.0.0.1:18001,http://127.0.0.1:18002,http://127.0.0.1:18003"
	targets := []*cpuTarget{
		{name: "naive-tuned", addr: "127.0.0.1:18097", args: []string{naive, "--listen", "127.0.0.1:18097", "--backends", backends, "--tuned"}},
		{name: "affinity round-robin", addr: "127.0.0.1:18090", args: []string{bin, "serve", "--watch=false", "--log-level", "warn", "-c", filepath.Join(o.configs, "peers.yaml")}},
		{name: "affinity cookie-sticky", addr: "127.0.0.1:18098", args: []string{bin, "serve", "--watch=false", "--log-level", "warn", "-c", filepath.Join(o.configs, "peers-sticky.yaml")}},
	}
	// The admin listener and the access log on, in the console format,
	// as in bench-peers' second table, on ports of their own. Its log goes
	// to /dev/null, where the harness's goes to a file.
	observed, err := moveConfig(filepath.Join(o.configs, "peers-observed.yaml"), dir,
		"127.0.0.1:18098", "127.0.0.1:18088", "127.0.0.1:18099", "127.0.0.1:18087")
	if err != nil {
		return err
	}
	targets = append(targets, &cpuTarget{name: "affinity round-robin, admin and access log", addr: "127.0.0.1:18088",
		args: []string{bin, "serve", "--watch=false", "-c", observed}})
	if o.env != "" {
		file, err := moveConfig(filepath.Join(o.configs, "peers.yaml"), dir, "127.0.0.1:18090", "127.0.0.1:18089")
		if err != nil {
			return err
		}
		targets = append(targets, &cpuTarget{name: "affinity round-robin, " + o.env, addr: "127.0.0.1:18089",
			args: []string{"env", o.env, bin, "serve", "--watch=false", "--log-level", "warn", "-c", file}})
	}
	if _, err := exec.LookPath("haproxy"); err == nil {
		targets = append(targets, &cpuTarget{name: "haproxy", addr: "127.0.0.1:18092", args: []string{"haproxy", "-f", filepath.Join(o.peers, "peers", "haproxy.cfg")}})
	}
	for _, t := range targets {
		defer t.stop()
		if err := t.start(ctx); err != nil {
			return err
		}
	}
	for r := 0; r < o.rounds; r++ {
		for _, t := range targets {
			if err := t.measure(ctx, o); err != nil {
				return err
			}
		}
	}
	fmt.Fprintf(out, "CPU time per request (/proc), median of %d rounds of %v, wrk -t1 -c%d; proxies on CPU 1, wrk and backends on CPU 0\n\n", o.rounds, o.dur, o.conns)
	fmt.Fprintln(out, "| target | req/s | CPU µs/request | min-max | user | kernel | per core vs naive-tuned |")
	fmt.Fprintln(out, "|---|---|---|---|---|---|---|")
	base := median(targets[0].total())
	for _, t := range targets {
		total := t.total()
		fmt.Fprintf(out, "| %s | %.0f | %.1f | %.1f-%.1f | %.1f | %.1f | %.2f |\n", t.name, median(t.rps), median(total),
			slices.Min(total), slices.Max(total), median(t.user), median(t.sys), base/median(total))
	}
	return nil
}

// moveConfig writes a copy of the config file src into dir with the
// addresses in from/to pairs replaced, and returns the copy's name.
func moveConfig(src, dir string, fromTo ...string) (string, error) {
	b, err := os.ReadFile(src)
	if err != nil {
		return "", err
	}
	file := filepath.Join(dir, filepath.Base(src))
	return file, os.WriteFile(file, []byte(strings.NewReplacer(fromTo...).Replace(string(b))), 0o600)
}

type cpuOptions struct {
	peers   string // the shared bench directory: naive/ and peers/
	configs string // affinity's configs for it: examples/bench
	rounds  int
	dur     time.Duration
	conns   int
	env     string // NAME=VALUE for one more round-robin target; "": none
}

// cpuTarget is one proxy and its figures, one per round.
type cpuTarget struct {
	name string
	addr string
	args []string
	cmd  *exec.Cmd

	rps       []float64
	user, sys []float64 // µs per request
}

func (t *cpuTarget) start(ctx context.Context) error {
	t.cmd = exec.CommandContext(ctx, "taskset", append([]string{"-c", "1"}, t.args...)...)
	t.cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	if err := t.cmd.Start(); err != nil {
		return fmt.Errorf("%s: %w", t.name, err)
	}
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", t.addr, time.Second); err == nil {
			_ = c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s: not listening on %s after %v", t.name, t.addr, startTimeout)
}

func (t *cpuTarget) stop() {
	if t.cmd != nil && t.cmd.Process != nil {
		_ = t.cmd.Process.Kill()
		_ = t.cmd.Wait()
	}
}

// measure runs wrk against t once and records its figures. taskset execs
// the proxy, so the process's own CPU time is the proxy's, every thread's.
func (t *cpuTarget) measure(ctx context.Context, o cpuOptions) error {
	stat := filepath.Join("/proc", strconv.Itoa(t.cmd.Process.Pid), "stat")
	before, err := readCPUTicks(stat)
	if err != nil {
		return fmt.Errorf("%s: %w", t.name, err)
	}
	res, err := exec.CommandContext(ctx, "taskset", "-c", "0", "wrk", "-t1", "-c"+strconv.Itoa(o.conns),
		"-d"+o.dur.String(), "http://"+t.addr+"/").CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: wrk: %v: %s", t.name, err, res)
	}
	after, err := readCPUTicks(stat)
	if err != nil {
		return fmt.Errorf("%s: %w", t.name, err)
	}
	n, rps, err := parseWrk(string(res))
	if err != nil {
		return fmt.Errorf("%s: %w", t.name, err)
	}
	t.rps = append(t.rps, rps)
	t.user = append(t.user, ticksToMicros(after[0]-before[0])/float64(n))
	t.sys = append(t.sys, ticksToMicros(after[1]-before[1])/float64(n))
	return nil
}

func (t *cpuTarget) total() []float64 {
	s := make([]float64, len(t.user))
	for i := range s {
		s[i] = t.user[i] + t.sys[i]
	}
	return s
}

// ticksToMicros turns clock ticks of /proc into µs: USER_HZ, which the
// kernel's interface to user space fixes at 100.
func ticksToMicros(ticks int64) float64 { return float64(ticks) * 1e4 }

// readCPUTicks returns a process's user and system time, in clock ticks,
// from its /proc stat file.
func readCPUTicks(file string) ([2]int64, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return [2]int64{}, err
	}
	return parseCPUTicks(string(b))
}

// parseCPUTicks reads utime and stime, the 14th and 15th fields of
// /proc/PID/stat. The second field, the command name, is in parentheses
// and may hold spaces and parentheses itself, so fields are counted from
// its last ')'.
func parseCPUTicks(stat string) ([2]int64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return [2]int64{}, fmt.Errorf("no command name in %q", stat)
	}
	f := strings.Fields(stat[i+1:]) // from the 3rd field on
	if len(f) < 13 {
		return [2]int64{}, fmt.Errorf("%d fields after the command name in %q", len(f), stat)
	}
	var t [2]int64
	for j, s := range f[11:13] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return [2]int64{}, fmt.Errorf("CPU time %q: %w", s, err)
		}
		t[j] = v
	}
	return t, nil
}

// parseWrk returns the requests wrk completed and its requests per second.
func parseWrk(out string) (int64, float64, error) {
	var n int64
	var rps float64
	var err error
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[1] == "requests" && f[2] == "in":
			n, err = strconv.ParseInt(f[0], 10, 64)
		case len(f) == 2 && f[0] == "Requests/sec:":
			rps, err = strconv.ParseFloat(f[1], 64)
		}
		if err != nil {
			return 0, 0, fmt.Errorf("wrk's %q: %w", line, err)
		}
	}
	if n <= 0 {
		return 0, 0, errors.New("no requests completed: " + out)
	}
	return n, rps, nil
}
