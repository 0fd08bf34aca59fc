package proxy

import (
	"bytes"
	"context"
	"image"
	"image/png"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

func TestRing(t *testing.T) {
	var r ring
	for i := range spreadSeconds + 5 {
		r.push(uint64(i))
	}
	series := r.series()
	if len(series) != spreadSeconds || series[0] != 5 || series[spreadSeconds-1] != spreadSeconds+4 {
		t.Errorf("series = %v, want 5..%d oldest first", series, spreadSeconds+4)
	}
	tests := []struct {
		k       int
		sum     uint64
		samples int
	}{
		{1, spreadSeconds + 4, 1},
		{3, 3*spreadSeconds + 9, 3},
		{spreadSeconds + 10, uint64((5 + spreadSeconds + 4) * spreadSeconds / 2), spreadSeconds},
	}
	for _, tt := range tests {
		if sum, n := r.newest(tt.k); sum != tt.sum || n != tt.samples {
			t.Errorf("newest(%d) = %d over %d, want %d over %d", tt.k, sum, n, tt.sum, tt.samples)
		}
	}
	var empty ring
	if sum, n := empty.newest(rateSeconds); sum != 0 || n != 0 {
		t.Errorf("empty ring: newest = %d over %d", sum, n)
	}
}

// TestSampler checks the per-second counts the sampler keeps, and that it
// forgets a backend a reload removed.
func TestSampler(t *testing.T) {
	cfg := catchAll(poolAt("web", "round-robin", map[string]*url.URL{
		"a": {Scheme: "http", Host: "127.0.0.1:1"}, "b": {Scheme: "http", Host: "127.0.0.1:2"},
	}, "a", "b"))
	s, err := NewServer(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	st := s.state.Load()
	a, b := statsOf(st.pools[0].backends[0]), statsOf(st.pools[0].backends[1])
	var sm sampler
	a.answered(http.StatusOK, time.Millisecond) // before the baseline: not shown
	sm.sample(st)
	for _, n := range []int{4, 0, 2} {
		for range n {
			a.answered(http.StatusOK, time.Millisecond)
		}
		b.failed(http.StatusBadGateway)
		sm.sample(st)
	}
	tests := []struct {
		name   string
		stats  *backendStats
		minute uint64
		rate   float64
		last   []uint64
	}{
		{"a", a, 6, 2, []uint64{4, 0, 2}},
		{"b", b, 3, 1, []uint64{1, 1, 1}},
	}
	for _, tt := range tests {
		sp := sm.spreadOf(tt.stats)
		if sp.lastMinute != tt.minute || sp.rate != tt.rate || !slices.Equal(sp.perSecond[spreadSeconds-3:], tt.last) {
			t.Errorf("%s: %d in the last minute at %v/s, newest %v; want %d at %v/s, %v",
				tt.name, sp.lastMinute, sp.rate, sp.perSecond[spreadSeconds-3:], tt.minute, tt.rate, tt.last)
		}
	}
	// A state without b: b is forgotten.
	only := &state{pools: []*pool{{backends: st.pools[0].backends[:1]}}}
	sm.sample(only)
	if sp := sm.spreadOf(b); sp.lastMinute != 0 || len(sm.rings) != 1 {
		t.Errorf("after b left: %d rings, b shows %d", len(sm.rings), sp.lastMinute)
	}
}

// demoStatus starts a proxy with two pools in the states a status page
// shows, and some traffic over the last seconds; it returns the admin URL
// and the backend names.
func demoStatus(t *testing.T) (admin string, names []string) {
	t.Helper()
	names = []string{"web-1", "web-2", "web-3", "api-a", "api-b"}
	urls := map[string]*url.URL{}
	for i, n := range names {
		health := http.StatusOK
		if i == 2 {
			health = http.StatusServiceUnavailable
		}
		urls[n] = codeBackend(t, n, health)
	}
	web := poolAt("web", "cookie", urls, "web-1", "web-2", "web-3")
	web.Backends[0].Weight = 2
	web.HealthCheck = &config.HealthCheck{Path: "/healthz", Interval: 20 * time.Millisecond,
		Timeout: 15 * time.Millisecond, Rise: 1, Fall: 1, StatusMin: 200, StatusMax: 399}
	api := poolAt("api", "round-robin", urls, "api-a", "api-b")
	passive := config.DefaultPassive()
	api.Passive = &passive
	cfg := &config.Config{
		Listen: "127.0.0.1:0", Timeouts: testTimeouts, Hash: strings.Repeat("5e", 32),
		Routes: []config.Route{{Match: config.Match{Path: "/api/"}, Pool: "api"}, {Pool: "web"}},
		Pools:  []*config.Pool{web, api},
	}
	s, proxyURL, admin := startWithAdmin(t, cfg, nil)
	st := s.state.Load()
	testutil.Eventually(t, waitFor, "web-3 to fail its checks", func() bool {
		return st.pools[0].view()[2].health() == "down"
	})
	c := testutil.Client(t)
	st.pools[1].eject(st.pools[1].backends[1], 3)
	if _, err := st.pools[0].setState("web-2", config.StateDrain, "127.0.0.1:40000"); err != nil {
		t.Fatal(err)
	}
	s.admin.sampler.sample(st)
	for sec := range 4 {
		for i := range 10 + 5*sec {
			path := "/"
			if i%3 == 0 {
				path = "/api/"
			}
			fetch(t, c, proxyURL.String()+path)
		}
		s.admin.sampler.sample(st)
	}
	return admin, names
}

// TestStatusPage checks the HTML page's content without a browser.
func TestStatusPage(t *testing.T) {
	admin, names := demoStatus(t)
	resp, err := testutil.Client(t).Get(admin + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	if _, err := body.ReadFrom(resp.Body); err != nil {
		t.Fatal(err)
	}
	page := body.String()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusOK || ct != "text/html; charset=utf-8" {
		t.Fatalf("GET / = %d %q", resp.StatusCode, ct)
	}
	want := append([]string{`<meta http-equiv="refresh" content="3">`, "5e5e5e5e5e5e", "cookie",
		`class="state down"`, `class="state ejected"`, `class="state drain"`, `title="set at run time, through the API">api<`, "status 503", " served, 0 parked"}, names...)
	for _, w := range want {
		if !strings.Contains(page, w) {
			t.Errorf("page lacks %q", w)
		}
	}
}

// TestStatusPageInChromium renders the status page in headless Chromium:
// the screenshot must show something, and the DOM every backend. It runs
// wherever chromium is installed, and always under CI. With
// AFFINITY_STATUS_SCREENSHOT set, the screenshot is kept at that path.
func TestStatusPageInChromium(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("chromium is required under CI: %v", err)
		}
		t.Skip("chromium is not installed")
	}
	admin, names := demoStatus(t)
	dir := t.TempDir()
	shot := filepath.Join(dir, "status.png")
	browse := func(args ...string) []byte {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, chromium, append([]string{
			"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
			"--disable-background-networking", "--disable-component-update", "--disable-sync",
			"--user-data-dir=" + filepath.Join(dir, "profile"), "--window-size=1280,900",
		}, args...)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("chromium %v: %v\n%s", args, err, stderr.Bytes())
		}
		return stdout.Bytes()
	}
	browse("--screenshot="+shot, admin+"/")
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	img, err := png.Decode(f)
	f.Close()
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 1280 || b.Dy() != 900 {
		t.Errorf("screenshot is %v, want 1280x900", b)
	}
	if n := colours(img); n < 16 {
		t.Errorf("screenshot has %d colours: the page did not render", n)
	}
	if keep := os.Getenv("AFFINITY_STATUS_SCREENSHOT"); keep != "" {
		data, err := os.ReadFile(shot)
		if err == nil {
			err = os.WriteFile(keep, data, 0o644)
		}
		if err != nil {
			t.Errorf("keep screenshot: %v", err)
		}
	}

	dom := string(browse("--dump-dom", admin+"/"))
	for _, n := range append(names, "affinity", "ejected", "down", "drain") {
		if !strings.Contains(dom, n) {
			t.Errorf("DOM lacks %q", n)
		}
	}
}

// colours counts the distinct colours of img, up to 1000.
func colours(img image.Image) int {
	seen := map[[4]uint32]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 3 {
		for x := b.Min.X; x < b.Max.X; x += 3 {
			r, g, bl, a := img.At(x, y).RGBA()
			seen[[4]uint32{r, g, bl, a}] = true
			if len(seen) >= 1000 {
				return len(seen)
			}
		}
	}
	return len(seen)
}
