package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/affinityproxy/affinity/config"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseRSS(t *testing.T) {
	tests := []struct {
		status string
		want   int64
		ok     bool
	}{
		{"Name:\taffinity\nVmPeak:\t  99 kB\nVmRSS:\t   26624 kB\nRssAnon: 1 kB\n", 26624 << 10, true},
		{"Name:\taffinity\n", 0, false},
		{"VmRSS:\tlots kB\n", 0, false},
	}
	for _, tt := range tests {
		got, err := parseRSS(tt.status)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseRSS(%q) = %d, %v; want %d, ok %v", tt.status, got, err, tt.want, tt.ok)
		}
	}
}

func TestParseCPUTicks(t *testing.T) {
	tests := []struct {
		stat string
		want [2]int64
		ok   bool
	}{
		{"4242 (affinity) S 1 4242 4242 0 -1 4194560 1377 0 0 0 523 117 0 0 20 0 7 0 1234 0\n", [2]int64{523, 117}, true},
		{"7 (a (b) c) R 1 7 7 0 -1 0 0 0 0 0 9 8 0 0 20 0 1 0 1 0\n", [2]int64{9, 8}, true},
		{"7 (x) R 1 2 3", [2]int64{}, false},
		{"no name here", [2]int64{}, false},
		{"7 (x) R 1 7 7 0 -1 0 0 0 0 0 nine 8 0", [2]int64{}, false},
	}
	for _, tt := range tests {
		got, err := parseCPUTicks(tt.stat)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseCPUTicks(%q) = %v, %v; want %v, ok %v", tt.stat, got, err, tt.want, tt.ok)
		}
	}
}

func TestParseWrk(t *testing.T) {
	out := `Running 5s test @ http://127.0.0.1:18090/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.21ms    2.10ms  40.12ms   80.00%
    Req/Sec     9.64k     1.20k   12.00k    70.00%
  48012 requests in 5.00s, 6.50MB read
Requests/sec:   9602.40
Transfer/sec:      1.30MB
`
	n, rps, err := parseWrk(out)
	if err != nil || n != 48012 || rps != 9602.40 {
		t.Errorf("parseWrk = %d, %v, %v; want 48012, 9602.4", n, rps, err)
	}
	if _, _, err := parseWrk("unable to connect to 127.0.0.1:18090 Connection refused\n"); err == nil {
		t.Error("parseWrk took an output with no requests")
	}
}

func TestMetric(t *testing.T) {
	exp := []byte("# HELP go_goroutines x\ngo_goroutines 12\ngo_goroutines_other 3\ngo_memstats_stack_inuse_bytes 1.5e+06\n")
	if got := metric(exp, "go_goroutines"); got != 12 {
		t.Errorf("go_goroutines = %v, want 12", got)
	}
	if got := metric(exp, "go_memstats_stack_inuse_bytes"); got != 1.5e6 {
		t.Errorf("stack = %v, want 1.5e6", got)
	}
	if got := metric(exp, "absent"); got != 0 {
		t.Errorf("absent = %v, want 0", got)
	}
}

// TestConfig: the proxy's configuration loads, with the two pools the
// load expects behind their routes.
func TestConfig(t *testing.T) {
	file := filepath.Join(t.TempDir(), "affinity.yaml")
	cfg := proxyConfig("127.0.0.1:1", "127.0.0.1:2", []string{"http://127.0.0.1:3", "http://127.0.0.1:4", "http://127.0.0.1:5"}, proxyOptions{parkAfter: time.Second})
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(file)
	if err != nil {
		t.Fatalf("%v\n%s", err, cfg)
	}
	if len(c.Pools) != 2 || c.Pools[0].Balancer.Type != "round-robin" || c.Pools[1].Balancer.Type != "cookie" ||
		len(c.Pools[1].Backends) != 3 || len(c.Routes) != 2 || c.Routes[0].Match.Path != "/sticky/" || !c.Admin.Pprof ||
		c.Server.ParkAfter != time.Second {
		t.Errorf("unexpected config %+v from\n%s", c, cfg)
	}
}

// TestCommands runs both commands briefly against a built proxy.
func TestCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the proxy")
	}
	bin := filepath.Join(t.TempDir(), "affinity")
	if out, err := exec.Command("go", "build", "-pgo=off", "-o", bin, "../../cmd/affinity").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pgo := filepath.Join(t.TempDir(), "default.pgo")
	var out bytes.Buffer
	if err := run(ctx, []string{"profile", "-bin", bin, "-out", pgo, "-duration", "1s", "-clients", "6"}, &out); err != nil {
		t.Fatalf("profile: %v", err)
	}
	if b, err := os.ReadFile(pgo); err != nil || !bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
		t.Errorf("profile wrote %d bytes, %v; want a gzipped profile", len(b), err)
	}
	out.Reset()
	if err := run(ctx, []string{"idle-conns", "-bin", bin, "-conns", "200", "-settle", "100ms", "-park-after", "200ms", "-release", "100ms"}, &out); err != nil {
		t.Fatalf("idle-conns: %v", err)
	}
	if !strings.Contains(out.String(), "idle keep-alive connections: 200") || !strings.Contains(out.String(), "parked 200") {
		t.Errorf("idle-conns reported:\n%s", out.String())
	}
	if err := run(ctx, []string{"nonsense"}, &out); err == nil {
		t.Error("an unknown command was accepted")
	}
	t.Run("instr", func(t *testing.T) { testCountRun(ctx, t, bin) })
}

// testCountRun: under cachegrind, serving more requests runs more
// instructions, and about as many per request as a proxy plausibly needs.
// The whole instr command runs four targets twice per round, too long for
// the tests; make bench-instr runs it.
func testCountRun(ctx context.Context, t *testing.T, bin string) {
	vg, err := exec.LookPath("valgrind")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("valgrind is missing; .ci/run installs it")
		}
		t.Skip("valgrind is not installed")
	}
	bs, err := startBackends()
	if err != nil {
		t.Fatal(err)
	}
	defer bs.close()
	target := instrTargets[0]
	var totals [2]int64
	for i, n := range []int{20, 220} {
		if totals[i], err = countRun(ctx, vg, bin, bs, target, n, 2); err != nil {
			t.Fatalf("%d requests: %v", n, err)
		}
	}
	// A request through the proxy takes some ten thousand instructions
	// at the very least and not millions.
	if per := (totals[1] - totals[0]) / 200; per < 10_000 || per > 5_000_000 {
		t.Errorf("%d and %d instructions for 20 and 220 requests: %d per request", totals[0], totals[1], per)
	}
}

func TestInstructions(t *testing.T) {
	got, err := instructions("==123== \n==123== I   refs:      154,727,561\n")
	if err != nil || got != 154_727_561 {
		t.Errorf("instructions = %d, %v; want 154727561", got, err)
	}
	if _, err := instructions("valgrind: cannot start"); err == nil {
		t.Error("no count read as one")
	}
}

func TestMedian(t *testing.T) {
	for _, tt := range []struct {
		xs   []float64
		want float64
	}{{[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := median(tt.xs); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.xs, got, tt.want)
		}
	}
}
