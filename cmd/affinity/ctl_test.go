package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/loopback"
)

// ctlProxy is `affinity serve` run in-process for ctl to talk to: pool
// "web" of b1 and b2 (demo apps), and pool "slow" of one backend whose
// requests wait for release.
type ctlProxy struct {
	listen, admin, config string
	started               chan struct{} // a request reached the slow backend
	release               chan struct{} // closed: the slow backend answers
	released              atomic.Bool
}

// startCtlProxy starts the proxy with admin settings extra (indented under
// admin:), and serve's flags args (default --watch=false).
func startCtlProxy(t *testing.T, extra string, args ...string) *ctlProxy {
	t.Helper()
	// Distinct, and below the ephemeral range, where no other test's
	// connection can take one before serve binds it.
	addrs, err := loopback.FreeAddrs(2)
	if err != nil {
		t.Fatal(err)
	}
	p := &ctlProxy{listen: addrs[0], admin: addrs[1], started: make(chan struct{}, 8), release: make(chan struct{})}
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.started <- struct{}{}
		select {
		case <-p.release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(slow.Close)
	p.config = writeFile(t, "affinity.yaml", fmt.Appendf(nil, `listen: %s
admin:
  listen: %s
%s
routes:
  - {match: {path: /slow}, pool: slow}
  - pool: web
pools:
  web:
    balancer: {type: cookie}
    backends:
      - {url: %s, name: b1}
      - {url: %s, name: b2}
  slow:
    backends: [{url: %s, name: s1}]
`, p.listen, p.admin, extra, startBackend(t, "b1").URL, startBackend(t, "b2").URL, slow.URL))
	ctx, cancel := context.WithCancel(context.Background())
	var stderr syncBuffer
	exited := make(chan int, 1)
	go func() {
		if len(args) == 0 {
			args = []string{"--watch=false"}
		}
		exited <- execute(ctx, append([]string{"serve", "-c", p.config}, args...), io.Discard, &stderr)
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-exited; code != exitOK {
			t.Errorf("serve exited %d; output:\n%s", code, stderr.String())
		}
	})
	waitFor(t, "the admin listener", func() bool {
		resp, err := http.Get("http://" + p.admin + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	// First of all: the proxy's stop and slow.Close wait for the slow
	// backend's requests.
	t.Cleanup(p.unblock)
	return p
}

// unblock lets the slow backend's requests answer.
func (p *ctlProxy) unblock() {
	if p.released.CompareAndSwap(false, true) {
		close(p.release)
	}
}

// slowRequest sends a request to the slow pool and returns once it has
// reached the backend; done is closed when it is answered.
func (p *ctlProxy) slowRequest(t *testing.T) (done chan struct{}) {
	t.Helper()
	done = make(chan struct{})
	c := &http.Client{Transport: &http.Transport{}}
	go func() {
		defer close(done)
		defer c.CloseIdleConnections()
		if resp, err := c.Get("http://" + p.listen + "/slow"); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	<-p.started
	return done
}

func TestCtlStates(t *testing.T) {
	p := startCtlProxy(t, "")
	admin := "--admin=" + p.admin
	code, out, errOut := run(t, "ctl", admin, "status")
	if code != exitOK || errOut != "" {
		t.Fatalf("status: exit %d, stderr %q", code, errOut)
	}
	wantRows(t, durationsOut(out), "POOL BACKEND STATE HEALTH IN FLIGHT IDLE SESSIONS", "web b1 ready up 0 D since start -",
		"web b2 ready up 0 D since start -", "slow s1 ready up 0 D since start -")

	steps := []struct {
		args []string
		out  string
		row  string
	}{
		{[]string{"drain", "web", "b2"}, "web/b2: drain; 0 in flight, idle D since start\n", "web b2 drain (api) up"},
		{[]string{"maint", "web", "b2"}, "web/b2: maint; 0 in flight, idle D since start\n", "web b2 maint (api) up"},
		{[]string{"ready", "web", "b2"}, "web/b2: ready; 0 in flight, idle D since start\n", "web b2 ready (api) up"},
	}
	for _, st := range steps {
		code, out, errOut := run(t, append([]string{"ctl", admin}, st.args...)...)
		if out = durationsOut(out); code != exitOK || out != st.out || errOut != "" {
			t.Errorf("ctl %v: exit %d, stdout %q, stderr %q; want 0, %q", st.args, code, out, errOut, st.out)
		}
		_, status, _ := run(t, "ctl", admin, "status")
		wantRows(t, status, st.row)
	}
	// The admin address from the config file.
	if code, out, _ := run(t, "ctl", "-c", p.config, "drain", "web", "b1"); code != exitOK || !strings.HasPrefix(out, "web/b1: drain") {
		t.Errorf("ctl -c FILE drain: exit %d, %q", code, out)
	}
}

// durationRE matches a duration as ctl prints it.
var durationRE = regexp.MustCompile(`\b[0-9.]+(ms|s|m|h)\b`)

// durationsOut replaces each duration in ctl's output with D.
func durationsOut(out string) string { return durationRE.ReplaceAllString(out, "D") }

// wantRows checks that table has a row starting with each of rows, the
// columns' padding aside.
func wantRows(t *testing.T, table string, rows ...string) {
	t.Helper()
	var got []string
	for line := range strings.Lines(table) {
		got = append(got, squeeze(line))
	}
	for _, r := range rows {
		if !slices.ContainsFunc(got, func(g string) bool { return strings.HasPrefix(g, r) }) {
			t.Errorf("no row %q in\n%s", r, table)
		}
	}
}

// TestCtlWait: drain --wait exits 0 once the backend has had no request in
// flight for --idle, and 1 with what is left when --timeout comes first.
func TestCtlWait(t *testing.T) {
	p := startCtlProxy(t, "")
	done := p.slowRequest(t)

	var progress syncBuffer
	var stdout strings.Builder
	exited := make(chan int, 1)
	go func() {
		exited <- execute(context.Background(), []string{"ctl", "--admin", p.admin, "drain", "slow", "s1", "--wait",
			"--idle", "300ms", "--timeout", "1m"}, &stdout, &progress)
	}()
	waitFor(t, "ctl to report the request in flight", func() bool {
		return strings.Contains(progress.String(), "slow/s1: 1 in flight, idle 0s")
	})
	select {
	case code := <-exited:
		t.Fatalf("ctl exited %d with a request in flight", code)
	default:
	}
	p.unblock()
	<-done
	if code := <-exited; code != exitOK || !strings.Contains(stdout.String(), "slow/s1 drained after ") {
		t.Fatalf("ctl drain --wait: exit %d, stdout %q, stderr %q", code, stdout.String(), progress.String())
	}

	// Not drained in time: exit 1, saying what is left.
	p2 := startCtlProxy(t, "")
	p2.slowRequest(t)
	code, out, _ := run(t, "ctl", "--admin", p2.admin, "maint", "slow", "s1", "--wait", "--timeout", "300ms")
	if code != exitFailure || !strings.Contains(out, "slow/s1 not drained after 300ms: 1 in flight, idle 0s") {
		t.Errorf("ctl maint --wait past its timeout: exit %d, stdout %q", code, out)
	}
	// A backend never used has been idle for the proxy's uptime only: the
	// process before may have served it a moment before the start.
	if code, out, _ := run(t, "ctl", "--admin", p2.admin, "drain", "web", "b1", "--wait", "--idle", "1h", "--timeout", "300ms"); code != exitFailure ||
		!strings.Contains(durationsOut(out), "web/b1 not drained after D: 0 in flight, idle D since start") {
		t.Errorf("drain --wait --idle 1h of a backend never used, on a proxy younger than that: exit %d, %q", code, out)
	}
	if code, out, _ := run(t, "ctl", "--admin", p2.admin, "drain", "web", "b2", "--wait", "--idle", "200ms"); code != exitOK ||
		!strings.Contains(durationsOut(out), "web/b2 drained after D: 0 in flight, idle D since start") {
		t.Errorf("drain --wait --idle 200ms of a backend never used: exit %d, %q", code, out)
	}
}

// TestCtlWaitStateChanged: ctl drain --wait whose backend changes state
// meanwhile exits 2, naming the change and what may have caused it: another
// operator, or a proxy restarted or upgraded, which forgot the drain.
func TestCtlWaitStateChanged(t *testing.T) {
	p := startCtlProxy(t, "")
	done := p.slowRequest(t)
	defer func() {
		p.unblock()
		<-done
	}()
	var progress syncBuffer
	var stdout strings.Builder
	exited := make(chan int, 1)
	go func() {
		exited <- execute(context.Background(), []string{"ctl", "--admin", p.admin, "drain", "slow", "s1", "--wait",
			"--idle", "300ms", "--timeout", "1m"}, &stdout, &progress)
	}()
	waitFor(t, "ctl to report the request in flight", func() bool {
		return strings.Contains(progress.String(), "slow/s1: 1 in flight, idle 0s")
	})
	if code, out, _ := run(t, "ctl", "--admin", p.admin, "ready", "slow", "s1"); code != exitOK {
		t.Fatalf("ctl ready: exit %d, %q", code, out)
	}
	if code := <-exited; code != exitUsage || !strings.Contains(progress.String()+stdout.String(), "slow/s1 is ready now: set by someone else while waiting, or the proxy restarted or was upgraded") {
		t.Errorf("drain --wait over a change of state: exit %d, stdout %q, stderr %q", code, stdout.String(), progress.String())
	}
}

// TestCtlWaitOverReweight: a reload that changes only the weight of a
// backend with a request in flight leaves that request counted, and ctl
// drain --wait waiting for it.
func TestCtlWaitOverReweight(t *testing.T) {
	p := startCtlProxy(t, "", "--watch=true")
	done := p.slowRequest(t)
	cfg, err := os.ReadFile(p.config)
	if err != nil {
		t.Fatal(err)
	}
	reweighted := strings.Replace(string(cfg), "name: s1}", "name: s1, weight: 3}", 1)
	if err := os.WriteFile(p.config, []byte(reweighted), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the reload giving s1 its new weight", func() bool {
		resp, err := http.Get("http://" + p.admin + "/api/v1/pools/slow/backends/s1")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(body), `"weight": 3`)
	})
	code, out, _ := run(t, "ctl", "--admin", p.admin, "drain", "slow", "s1", "--wait", "--idle", "100ms", "--timeout", "300ms")
	if code != exitFailure || !strings.Contains(out, "slow/s1 not drained after 300ms: 1 in flight, idle 0s") {
		t.Errorf("drain --wait with a request in flight begun before the reweight: exit %d, %q", code, out)
	}
	p.unblock()
	<-done
}

// TestCtlErrors: usage errors, a proxy not there, and refusals of the API
// all exit 2 with a message, and change nothing.
func TestCtlErrors(t *testing.T) {
	p := startCtlProxy(t, "  token: \"0123456789abcdef-ctl\"")
	admin := "--admin=" + p.admin
	free, err := loopback.FreeAddrs(1)
	if err != nil {
		t.Fatal(err)
	}
	nobody := free[0]
	tests := []struct {
		name string
		args []string
		env  string // AFFINITY_TOKEN
		code int
		msg  string
	}{
		{"no address", []string{"ctl", "status"}, "", exitUsage, "no admin address"},
		{"missing backend", []string{"ctl", admin, "drain", "web"}, "", exitUsage, "accepts 2 arg(s)"},
		{"unknown command", []string{"ctl", admin, "pause", "web", "b1"}, "", exitUsage, "unknown command"},
		{"bad idle", []string{"ctl", admin, "drain", "web", "b1", "--wait", "--idle", "soon"}, "", exitUsage, "invalid argument"},
		{"negative idle", []string{"ctl", admin, "drain", "web", "b1", "--wait", "--idle", "-1s"}, "", exitUsage, "--idle -1s: must not be negative"},
		{"negative timeout", []string{"ctl", admin, "maint", "web", "b1", "--wait", "--timeout", "-1m"}, "", exitUsage, "--timeout -1m0s: must be above 0"},
		{"no timeout", []string{"ctl", admin, "drain", "web", "b1", "--timeout", "0s"}, "", exitUsage, "--timeout 0s: must be above 0"},
		{"proxy not there", []string{"ctl", "--admin", nobody, "status"}, "", exitUsage, "connection refused"},
		{"bad address", []string{"ctl", "--admin", "ftp://x", "status"}, "", exitUsage, "want host:port"},
		{"no token", []string{"ctl", admin, "drain", "web", "b1"}, "", exitUsage, "401 Unauthorized: this write needs Authorization: Bearer TOKEN"},
		{"wrong token", []string{"ctl", admin, "--token", "0123456789abcdef-nope", "drain", "web", "b1"}, "", exitUsage, "401 Unauthorized: wrong token"},
		{"wrong token from the environment", []string{"ctl", admin, "drain", "web", "b1"}, "0123456789abcdef-nope", exitUsage, "wrong token"},
		{"unknown pool", []string{"ctl", admin, "--token", "0123456789abcdef-ctl", "drain", "api", "b1"}, "", exitUsage, `404 Not Found: no pool "api"`},
		{"unknown backend", []string{"ctl", admin, "--token", "0123456789abcdef-ctl", "ready", "web", "b9"}, "", exitUsage, `pool "web" has no backend "b9"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("AFFINITY_TOKEN", tt.env)
			code, _, errOut := run(t, tt.args...)
			if code != tt.code || !strings.Contains(errOut, tt.msg) {
				t.Errorf("exit %d, stderr %q; want %d with %q", code, errOut, tt.code, tt.msg)
			}
		})
	}
	if _, out, _ := run(t, "ctl", admin, "status"); strings.Contains(out, "(api)") {
		t.Errorf("a refused write changed a state:\n%s", out)
	}
	// The right token, from the flag, the environment, or the config file.
	for _, args := range [][]string{
		{"ctl", admin, "--token", "0123456789abcdef-ctl", "drain", "web", "b1"},
		{"ctl", "-c", p.config, "drain", "web", "b2"},
	} {
		if code, _, errOut := run(t, args...); code != exitOK {
			t.Errorf("%v: exit %d, %s", args, code, errOut)
		}
	}
	t.Setenv("AFFINITY_TOKEN", "0123456789abcdef-ctl")
	if code, _, errOut := run(t, "ctl", admin, "ready", "web", "b1"); code != exitOK {
		t.Errorf("token from $AFFINITY_TOKEN: exit %d, %s", code, errOut)
	}
}

func TestDialable(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:9090":      "127.0.0.1:9090",
		":9090":               "127.0.0.1:9090",
		"0.0.0.0:9090":        "127.0.0.1:9090",
		"[::]:9090":           "[::1]:9090",
		"10.0.0.7:9090":       "10.0.0.7:9090",
		"admin.internal:9090": "admin.internal:9090",
	} {
		if got := dialable(in); got != want {
			t.Errorf("dialable(%q) = %q, want %q", in, got, want)
		}
	}
}

// A progress line is printed when it changes, not on every poll.
func TestProgressOf(t *testing.T) {
	idle, sessions := 12.3, 4
	b := ctlBackend{InFlight: 0, Upgraded: 0, IdleSeconds: &idle, Sessions: &sessions}
	if got := progressOf(b); got != "0 in flight, idle 12s, 4 sessions" {
		t.Errorf("progressOf = %q", got)
	}
	b = ctlBackend{InFlight: 3, Upgraded: 1, Streams: 1, IdleSeconds: new(float64)}
	if got := progressOf(b); got != "3 in flight (1 upgraded, 1 streams), idle 0s" {
		t.Errorf("progressOf = %q", got)
	}
	b = ctlBackend{IdleSeconds: &idle, Unused: true}
	if got := progressOf(b); got != "0 in flight, idle 12s since start" {
		t.Errorf("progressOf = %q", got)
	}
	for _, tt := range []struct {
		b    ctlBackend
		idle time.Duration
		want bool
	}{
		{ctlBackend{IdleSeconds: &idle}, 12 * time.Second, true},
		{ctlBackend{IdleSeconds: &idle}, 13 * time.Second, false},
		{ctlBackend{IdleSeconds: &idle, Unused: true}, 12 * time.Second, true},
		{ctlBackend{IdleSeconds: &idle, Unused: true}, 13 * time.Second, false},
		{ctlBackend{InFlight: 1, IdleSeconds: new(float64)}, 0, false},
		{ctlBackend{}, 0, false}, // no idle time known
	} {
		if got := drained(tt.b, tt.idle); got != tt.want {
			t.Errorf("drained(%d in flight, idle %v, unused %v; --idle %v) = %v", tt.b.InFlight, tt.b.IdleSeconds, tt.b.Unused, tt.idle, got)
		}
	}
}

// TestDeployScript runs examples/deploy.sh with this binary as ctl and a
// restart command that records the backend's state when it runs: each
// backend is drained before its restart and ready after.
func TestDeployScript(t *testing.T) {
	bin := buildBinary(t)
	p := startCtlProxy(t, "")
	dir := t.TempDir()
	log := filepath.Join(dir, "restarts")
	ctl := bin + " ctl --admin " + p.admin
	restart := ctl + ` status | grep "^web *$1 " >> ` + log + ` && echo "restarted $1" >> ` + log
	cmd := exec.Command("sh", filepath.Join("..", "..", "examples", "deploy.sh"), "web", restart, "b1", "b2")
	cmd.Env = append(os.Environ(), "CTL="+ctl, "IDLE=100ms", "TIMEOUT=10s")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("deploy.sh: %v\n%s", err, out)
	}
	got, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	rows := strings.Split(strings.TrimSpace(string(got)), "\n")
	if len(rows) != 4 || !strings.HasPrefix(squeeze(rows[0]), "web b1 drain (api)") || rows[1] != "restarted b1" ||
		!strings.HasPrefix(squeeze(rows[2]), "web b2 drain (api)") || rows[3] != "restarted b2" {
		t.Errorf("restarts saw:\n%s\nwant each backend draining when restarted", got)
	}
	_, status, _ := run(t, "ctl", "--admin", p.admin, "status")
	wantRows(t, status, "web b1 ready (api)", "web b2 ready (api)")
	if !strings.Contains(string(out), "web/b1 drained after") || !strings.Contains(string(out), "web/b2: ready") {
		t.Errorf("deploy.sh said:\n%s", out)
	}
}

// squeeze joins the fields of a table row with single spaces.
func squeeze(row string) string { return strings.Join(strings.Fields(row), " ") }
