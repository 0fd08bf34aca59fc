package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// gated is a backend whose requests are each held until the test lets
// them go, so that a test decides which requests are in flight.
type gated struct {
	id   string
	url  *url.URL
	held chan heldRequest // each request, as it arrives
	// active and peak count the requests in the handler, now and at most.
	active, peak atomic.Int64
}

// heldRequest is a request a gated backend holds: its X-Tag, and the
// channel whose closing answers it.
type heldRequest struct {
	tag     string
	release chan struct{}
}

func startGated(t *testing.T, id string) *gated {
	t.Helper()
	g := &gated{id: id, held: make(chan heldRequest, 64)}
	stop := make(chan struct{})
	g.url = testutil.StartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := g.active.Add(1)
		defer g.active.Add(-1)
		for p := g.peak.Load(); n > p && !g.peak.CompareAndSwap(p, n); p = g.peak.Load() {
		}
		h := heldRequest{tag: r.Header.Get("X-Tag"), release: make(chan struct{})}
		g.held <- h
		select {
		case <-h.release:
		case <-stop:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, g.id)
	}))
	// Cleanups run last first: held handlers end before the server closes.
	t.Cleanup(func() { close(stop) })
	return g
}

// next returns the next request g holds, failing the test if none comes.
func (g *gated) next(t *testing.T) heldRequest {
	t.Helper()
	select {
	case h := <-g.held:
		return h
	case <-time.After(waitFor):
		t.Fatalf("backend %s: no request came", g.id)
	}
	return heldRequest{}
}

// queuedPool returns a pool over gs with max_conns limit each and a queue.
func queuedPool(kind string, limit, max int, timeout time.Duration, gs ...*gated) *config.Pool {
	p := &config.Pool{Name: "web", Balancer: config.Balancer{Type: kind}, Queue: config.Queue{Max: max, Timeout: timeout}}
	if kind == "cookie" {
		p.Balancer.Options = cookieOptions()
	}
	for _, g := range gs {
		p.Backends = append(p.Backends, config.Backend{URL: g.url, Name: g.id, Weight: 1, MaxConns: limit})
	}
	return p
}

// result is what an asynchronous request got.
type result struct {
	tag    string
	status int
	body   string
	header http.Header
	proto  int
	err    error
}

// sendTagged sends a GET tagged tag through c in the background; its result
// arrives on the returned channel.
func sendTagged(ctx context.Context, c *http.Client, target, tag string, cookie *http.Cookie) <-chan result {
	out := make(chan result, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
		req.Header.Set("X-Tag", tag)
		if cookie != nil {
			req.AddCookie(cookie)
		}
		res, err := c.Do(req)
		if err != nil {
			out <- result{tag: tag, err: err}
			return
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		out <- result{tag: tag, status: res.StatusCode, body: string(b), header: res.Header, proto: res.ProtoMajor, err: err}
	}()
	return out
}

func await(t *testing.T, ch <-chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("request %s: %v", r.tag, r.err)
		}
		return r
	case <-time.After(4 * waitFor):
		t.Fatal("no answer")
	}
	return result{}
}

// waitQueued waits until the pool's queue holds n requests, and the
// backend (when not "") n pinned ones of them.
func waitQueued(t *testing.T, s *Server, n int64, backend string, pinned int64) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		p := s.state.Load().pool("web")
		got, gotPinned := p.queue.waiting.Load(), int64(0)
		if backend != "" {
			gotPinned = statsOf(p.backends[p.indexOf(backend)]).queued.Load()
		}
		if got == n && gotPinned == pinned {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue holds %d (%d pinned to %q), want %d (%d)", got, gotPinned, backend, n, pinned)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestMaxConnsExact: however many clients at once, a backend never has
// more requests in flight than its max_conns, and every client is served.
func TestMaxConnsExact(t *testing.T) {
	g := startGated(t, "a")
	_, u := startProxy(t, catchAll(queuedPool("round-robin", 3, 100, time.Minute, g)), zap.NewNop())
	c := testutil.Client(t)
	const clients = 24
	results := make([]<-chan result, clients)
	for i := range results {
		results[i] = sendTagged(t.Context(), c, u.String(), fmt.Sprint(i), nil)
	}
	// Three at a time: max_conns lets no fourth in while they are held.
	for n := 0; n < clients; n += 3 {
		hs := []heldRequest{g.next(t), g.next(t), g.next(t)}
		for _, h := range hs {
			close(h.release)
		}
	}
	for _, ch := range results {
		if r := await(t, ch); r.status != http.StatusOK {
			t.Errorf("request %s: status %d", r.tag, r.status)
		}
	}
	if p := g.peak.Load(); p != 3 {
		t.Errorf("backend had %d requests in flight at most, want max_conns 3", p)
	}
}

// TestQueueFIFO: the requests that wait are served in the order they came.
func TestQueueFIFO(t *testing.T) {
	g := startGated(t, "a")
	s, u := startProxy(t, catchAll(queuedPool("round-robin", 1, 100, time.Minute, g)), zap.NewNop())
	c := testutil.Client(t)
	first := sendTagged(t.Context(), c, u.String(), "0", nil)
	h := g.next(t)
	var waits []<-chan result
	for i := 1; i <= 4; i++ {
		waits = append(waits, sendTagged(t.Context(), c, u.String(), fmt.Sprint(i), nil))
		waitQueued(t, s, int64(i), "", 0)
	}
	close(h.release)
	await(t, first)
	for i := 1; i <= 4; i++ {
		h := g.next(t)
		if h.tag != fmt.Sprint(i) {
			t.Fatalf("request %s served after %d, want %d", h.tag, i-1, i)
		}
		close(h.release)
		await(t, waits[i-1])
	}
}

// pinTo returns a cookie pinning a client to the backend of the two that
// answers a first request, that backend, and the other one.
func pinTo(t *testing.T, c *http.Client, target string, ga, gb *gated) (*http.Cookie, *gated, *gated) {
	t.Helper()
	ch := sendTagged(t.Context(), c, target, "pin", nil)
	x, y := ga, gb
	select {
	case h := <-ga.held:
		close(h.release)
	case h := <-gb.held:
		x, y = gb, ga
		close(h.release)
	case <-time.After(waitFor):
		t.Fatal("the first request reached no backend")
	}
	r := await(t, ch)
	for _, ck := range (&http.Response{Header: r.header}).Cookies() {
		if ck.Name == "aff" {
			return ck, x, y
		}
	}
	t.Fatalf("no sticky cookie in %v", r.header)
	return nil, nil, nil
}

// TestQueueSticky: a pinned client waits for its own backend, however
// long, while new clients go to a backend with room; when none has room a
// new client waits for whichever frees first, after the pinned client
// that came before it, and is pinned where it is served.
func TestQueueSticky(t *testing.T) {
	ga, gb := startGated(t, "a"), startGated(t, "b")
	s, u := startProxy(t, catchAll(queuedPool("cookie", 1, 100, time.Minute, ga, gb)), zap.NewNop())
	c := testutil.Client(t)
	pin, x, y := pinTo(t, c, u.String(), ga, gb)
	busy := sendTagged(t.Context(), c, u.String(), "busy", pin)
	hBusy := x.next(t)
	sticky := sendTagged(t.Context(), c, u.String(), "sticky", pin)
	waitQueued(t, s, 1, x.id, 1)
	sticky2 := sendTagged(t.Context(), c, u.String(), "sticky2", pin)
	waitQueued(t, s, 2, x.id, 2)
	// New clients go to y, which has room, wherever the rotation would
	// have placed them: of two in a row it places one on x.
	for i := range 2 {
		tag := fmt.Sprint("new", i)
		ch := sendTagged(t.Context(), c, u.String(), tag, nil)
		if h := y.next(t); h.tag != tag {
			t.Fatalf("backend %s got %q, want %q", y.id, h.tag, tag)
		} else {
			close(h.release)
		}
		if r := await(t, ch); r.body != y.id {
			t.Fatalf("new client served by %q, want %q", r.body, y.id)
		}
	}
	// One more holds y; the next finds both full and waits.
	spill := sendTagged(t.Context(), c, u.String(), "spill", nil)
	hSpill := y.next(t)
	if hSpill.tag != "spill" {
		t.Fatalf("backend %s got %q, want the new client", y.id, hSpill.tag)
	}
	late := sendTagged(t.Context(), c, u.String(), "late", nil)
	waitQueued(t, s, 3, x.id, 2)

	close(hBusy.release)
	await(t, busy)
	h := x.next(t)
	if h.tag != "sticky" {
		t.Fatalf("backend %s served %q first, want the pinned client that waited longest", x.id, h.tag)
	}
	close(h.release)
	if r := await(t, sticky); r.body != x.id {
		t.Fatalf("pinned client served by %q, want %q", r.body, x.id)
	}
	h = x.next(t)
	if h.tag != "sticky2" {
		t.Fatalf("backend %s then served %q, want the second pinned client", x.id, h.tag)
	}
	close(h.release)
	await(t, sticky2)
	h = x.next(t)
	if h.tag != "late" {
		t.Fatalf("backend %s then served %q, want the waiting new client", x.id, h.tag)
	}
	close(h.release)
	r := await(t, late)
	if r.body != x.id {
		t.Fatalf("new client served by %q, want %q", r.body, x.id)
	}
	close(hSpill.release)
	await(t, spill)
	// The late client is pinned where it was served.
	var latePin *http.Cookie
	for _, ck := range (&http.Response{Header: r.header}).Cookies() {
		latePin = ck
	}
	if latePin == nil {
		t.Fatal("the new client served after waiting got no sticky cookie")
	}
	again := sendTagged(t.Context(), c, u.String(), "again", latePin)
	h = x.next(t)
	close(h.release)
	await(t, again)
}

// TestQueueRefusals: past queue.max a request is answered 503 at once,
// past queue.timeout a waiting one is; both with Retry-After, counted by
// reason. A client that leaves while waiting frees its place at once.
func TestQueueRefusals(t *testing.T) {
	g := startGated(t, "a")
	cfg := catchAll(queuedPool("round-robin", 1, 1, 1500*time.Millisecond, g))
	cfg.Log.Access = true
	log, logs := observed()
	s, u, admin := startWithAdmin(t, cfg, log)
	c := testutil.Client(t)
	busy := sendTagged(t.Context(), c, u.String(), "busy", nil)
	hBusy := g.next(t)

	// A client that leaves frees its place: the next one gets it.
	ctx, cancel := context.WithCancel(t.Context())
	gone := sendTagged(ctx, c, u.String(), "gone", nil)
	waitQueued(t, s, 1, "", 0)
	cancel()
	<-gone
	waitQueued(t, s, 0, "", 0)

	waiting := sendTagged(t.Context(), c, u.String(), "waiting", nil)
	waitQueued(t, s, 1, "", 0)
	fams := scrape(t, c, admin)
	for _, m := range []struct {
		name, labels string
		want         float64
	}{
		{"affinity_queue_waiting", "pool=web", 1},
		{"affinity_queue_waiting_pinned", "pool=web,backend=a", 0},
		{"affinity_backend_in_flight", "pool=web,backend=a", 1},
		{"affinity_backend_max_conns", "pool=web,backend=a", 1},
	} {
		if v, ok := metricValue(fams, m.name, m.labels); !ok || v != m.want {
			t.Errorf("%s{%s} = %v (%v), want %v", m.name, m.labels, v, ok, m.want)
		}
	}
	// The status page shows in flight against max_conns, and the queue.
	page := get(t, c, admin+"/", nil).body
	for _, w := range []string{`<td class="num">1/1`, "queued 1, refused by the queue 0"} {
		if !strings.Contains(page, w) {
			t.Errorf("status page lacks %q", w)
		}
	}
	full := await(t, sendTagged(t.Context(), c, u.String(), "full", nil))
	timedOut := await(t, waiting)
	for _, r := range []result{full, timedOut} {
		if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") != "2" {
			t.Errorf("request %s: status %d, Retry-After %q; want 503, 2", r.tag, r.status, r.header.Get("Retry-After"))
		}
	}
	fams = scrape(t, c, admin)
	for _, reason := range []string{"full", "timeout", "left"} {
		if v, _ := metricValue(fams, "affinity_queue_refused_total", "pool=web,reason="+reason); v != 1 {
			t.Errorf("affinity_queue_refused_total{reason=%s} = %v, want 1", reason, v)
		}
	}
	// The access log tells the queue's refusals apart, and how long
	// each waited: the one that timed out waited queue.timeout at least.
	byRefusal := map[string]time.Duration{}
	deadline := time.Now().Add(waitFor)
	for len(byRefusal) < 3 && time.Now().Before(deadline) {
		for _, e := range entries(logs, "request") {
			m := e.ContextMap()
			byRefusal[fmt.Sprintf("%v %v", m["status"], m["refused"])] = m["queued"].(time.Duration)
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, want := range []struct {
		key      string
		atLeast  time.Duration
		positive bool
	}{
		{key: "503 queue-full"},
		{key: "503 queue-timeout", atLeast: 1500 * time.Millisecond},
		{key: "499 ", positive: true}, // the client that left while waiting
	} {
		q, ok := byRefusal[want.key]
		if !ok || q < want.atLeast || want.positive && q <= 0 || want.key == "503 queue-full" && q != 0 {
			t.Errorf("access line %q: queued %v (found %v)", want.key, q, ok)
		}
	}
	close(hBusy.release)
	if r := await(t, busy); r.status != http.StatusOK {
		t.Errorf("busy request: status %d", r.status)
	}
	if n := len(g.held); n != 0 {
		t.Errorf("%d refused or abandoned requests reached the backend", n)
	}
}

// TestQueueReload: a reload while requests wait loses none, and a limit it
// raises lets waiters in at once.
func TestQueueReload(t *testing.T) {
	g := startGated(t, "a")
	cfg := catchAll(queuedPool("round-robin", 1, 100, time.Minute, g))
	s, u := startProxy(t, cfg, zap.NewNop())
	c := testutil.Client(t)
	var all []<-chan result
	all = append(all, sendTagged(t.Context(), c, u.String(), "0", nil))
	var held []heldRequest
	held = append(held, g.next(t))
	for i := 1; i <= 3; i++ {
		all = append(all, sendTagged(t.Context(), c, u.String(), fmt.Sprint(i), nil))
		waitQueued(t, s, int64(i), "", 0)
	}
	raised := catchAll(queuedPool("round-robin", 2, 100, time.Minute, g))
	if err := s.Reload(raised); err != nil {
		t.Fatal(err)
	}
	held = append(held, g.next(t)) // let in by the raised limit
	waitQueued(t, s, 2, "", 0)
	for _, h := range held {
		close(h.release)
	}
	for range 2 {
		close(g.next(t).release)
	}
	for _, ch := range all {
		if r := await(t, ch); r.status != http.StatusOK {
			t.Errorf("request %s: status %d", r.tag, r.status)
		}
	}
	if p := g.peak.Load(); p != 2 {
		t.Errorf("peak in flight %d, want 2", p)
	}
}

// TestQueueDrain: a draining backend serves the clients pinned to it that
// wait for it, and none of those waiting for any backend.
func TestQueueDrain(t *testing.T) {
	ga, gb := startGated(t, "a"), startGated(t, "b")
	s, u := startProxy(t, catchAll(queuedPool("cookie", 1, 100, time.Minute, ga, gb)), zap.NewNop())
	c := testutil.Client(t)
	pin, x, y := pinTo(t, c, u.String(), ga, gb)
	p1 := sendTagged(t.Context(), c, u.String(), "p1", pin)
	h1 := x.next(t)
	n1 := sendTagged(t.Context(), c, u.String(), "n1", nil)
	hn1 := y.next(t)
	if _, _, err := s.setState("web", x.id, config.StateDrain, "test"); err != nil {
		t.Fatal(err)
	}
	loose := sendTagged(t.Context(), c, u.String(), "loose", nil)
	waitQueued(t, s, 1, x.id, 0)
	p2 := sendTagged(t.Context(), c, u.String(), "p2", pin)
	waitQueued(t, s, 2, x.id, 1)

	close(h1.release)
	await(t, p1)
	h := x.next(t)
	if h.tag != "p2" {
		t.Fatalf("draining backend served %q, want the pinned p2", h.tag)
	}
	close(h.release)
	await(t, p2)
	waitQueued(t, s, 1, x.id, 0) // the new client still waits
	close(hn1.release)
	await(t, n1)
	h = y.next(t)
	close(h.release)
	if r := await(t, loose); r.body != y.id {
		t.Fatalf("waiting new client served by %q, want %q", r.body, y.id)
	}
}

// TestQueueRetry: a retry goes only to a backend with room, and waits for
// none: with the one backend that would take it full, the client gets the
// failed attempt's 502.
func TestQueueRetry(t *testing.T) {
	g := startGated(t, "g")
	ln := testutil.Listen(t)
	dead := &url.URL{Scheme: "http", Host: ln.Addr().String()}
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	p := queuedPool("round-robin", 1, 100, time.Minute, g)
	p.Backends = append(p.Backends, config.Backend{URL: dead, Name: "dead", Weight: 1})
	p.Retries = config.Retries{Count: 1}
	_, u := startProxy(t, catchAll(p), zap.NewNop())
	c := testutil.Client(t)
	// Wherever the rotation sends it, the first request ends on g: at
	// once, or retried there after the dead backend refused it.
	first := sendTagged(t.Context(), c, u.String(), "first", nil)
	h := g.next(t)
	// The second goes to the dead backend, as g is full, and its retry
	// finds no room.
	if r := await(t, sendTagged(t.Context(), c, u.String(), "second", nil)); r.status != http.StatusBadGateway {
		t.Errorf("second request: status %d, want 502", r.status)
	}
	close(h.release)
	await(t, first)
	if p := g.peak.Load(); p != 1 || len(g.held) != 0 {
		t.Errorf("backend g had %d in flight at most, %d more came; want max_conns 1 and none", p, len(g.held))
	}
}

// TestQueueHTTP2: each stream of an HTTP/2 connection counts one against
// max_conns, and waits as a request of its own.
func TestQueueHTTP2(t *testing.T) {
	g := startGated(t, "a")
	s, addr, cert := startH2Proxy(t, catchAll(queuedPool("round-robin", 2, 100, time.Minute, g)))
	tr := &http.Transport{ForceAttemptHTTP2: true, TLSClientConfig: &tls.Config{RootCAs: cert.roots}}
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr}
	target := "https://" + addr + "/"
	var all []<-chan result
	for i := range 2 {
		all = append(all, sendTagged(t.Context(), c, target, fmt.Sprint(i), nil))
	}
	held := []heldRequest{g.next(t), g.next(t)}
	all = append(all, sendTagged(t.Context(), c, target, "2", nil))
	waitQueued(t, s, 1, "", 0)
	close(held[0].release)
	h := g.next(t)
	if h.tag != "2" {
		t.Fatalf("backend got %q, want the stream that waited", h.tag)
	}
	close(h.release)
	close(held[1].release)
	for _, ch := range all {
		if r := await(t, ch); r.status != http.StatusOK || r.proto != 2 {
			t.Errorf("stream %s: status %d over HTTP/%d", r.tag, r.status, r.proto)
		}
	}
	if p := g.peak.Load(); p != 2 {
		t.Errorf("peak in flight %d, want 2", p)
	}
}

// TestQueueMaint: clients waiting for a backend put in maint go back to the
// balancer at once, which moves them as it moves their next requests,
// rather than waiting out queue.timeout for it.
func TestQueueMaint(t *testing.T) {
	ga, gb := startGated(t, "a"), startGated(t, "b")
	s, u := startProxy(t, catchAll(queuedPool("cookie", 1, 100, time.Minute, ga, gb)), zap.NewNop())
	c := testutil.Client(t)
	pin, x, y := pinTo(t, c, u.String(), ga, gb)
	busy := sendTagged(t.Context(), c, u.String(), "busy", pin)
	hBusy := x.next(t)
	moved := sendTagged(t.Context(), c, u.String(), "moved", pin)
	waitQueued(t, s, 1, x.id, 1)
	repins := s.state.Load().pool("web").repins.Load()
	if _, _, err := s.setState("web", x.id, config.StateMaint, "test"); err != nil {
		t.Fatal(err)
	}
	h := y.next(t)
	if h.tag != "moved" {
		t.Fatalf("backend %s got %q, want the client moved off %s", y.id, h.tag, x.id)
	}
	close(h.release)
	if r := await(t, moved); r.status != http.StatusOK || r.body != y.id {
		t.Errorf("moved client: status %d from %q, want 200 from %q", r.status, r.body, y.id)
	}
	if got := s.state.Load().pool("web").repins.Load() - repins; got != 1 {
		t.Errorf("repins %d, want 1: the moved client", got)
	}
	close(hBusy.release)
	await(t, busy)
}

// TestQueueMaintAndBack: a pinned waiter whose backend goes to maint waits
// for any backend; when its own is ready again and frees first, it is
// served there, its affinity kept: no repin counted, no cookie sent again.
func TestQueueMaintAndBack(t *testing.T) {
	ga, gb := startGated(t, "a"), startGated(t, "b")
	s, u := startProxy(t, catchAll(queuedPool("cookie", 1, 100, time.Minute, ga, gb)), zap.NewNop())
	c := testutil.Client(t)
	pin, x, y := pinTo(t, c, u.String(), ga, gb)
	busyX := sendTagged(t.Context(), c, u.String(), "busy-x", pin)
	hx := x.next(t)
	busyY := sendTagged(t.Context(), c, u.String(), "busy-y", nil)
	hy := y.next(t)
	waiting := sendTagged(t.Context(), c, u.String(), "waiting", pin)
	waitQueued(t, s, 1, x.id, 1)
	repins := s.state.Load().pool("web").repins.Load()
	if _, _, err := s.setState("web", x.id, config.StateMaint, "test"); err != nil {
		t.Fatal(err)
	}
	// Sent back to the balancer, it waits for any backend.
	waitQueued(t, s, 1, x.id, 0)
	if _, _, err := s.setState("web", x.id, config.StateReady, "test"); err != nil {
		t.Fatal(err)
	}
	close(hx.release)
	h := x.next(t)
	if h.tag != "waiting" {
		t.Fatalf("backend %s got %q, want the waiting client", x.id, h.tag)
	}
	close(h.release)
	r := await(t, waiting)
	if r.status != http.StatusOK || r.body != x.id {
		t.Errorf("waiting client: status %d from %q, want 200 from its own %q", r.status, r.body, x.id)
	}
	if sc := r.header.Values("Set-Cookie"); len(sc) != 0 {
		t.Errorf("waiting client was sent %q, the cookie it has", sc)
	}
	if got := s.state.Load().pool("web").repins.Load() - repins; got != 0 {
		t.Errorf("repins %d, want 0: the client stayed on its backend", got)
	}
	close(hy.release)
	await(t, busyX)
	await(t, busyY)
}

// TestQueueReloadMoves: a reload that puts the backend clients wait for in
// maint, removes it or moves it to another URL sends them back to the
// balancer at once: to another backend, repinned, or to the new URL,
// pinned still. None waits for the old one to free a place.
func TestQueueReloadMoves(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(p *config.Pool, x, moved *gated)
		// toMoved: served at the new URL of x, its client still pinned;
		// otherwise by the other backend, repinned unless the new
		// balancer pins nobody.
		toMoved, unpinned bool
	}{
		{name: "maint", change: func(p *config.Pool, x, _ *gated) {
			p.Backends[configuredIndex(p, x.id)].State = config.StateMaint
		}},
		{name: "removed", change: func(p *config.Pool, x, _ *gated) {
			i := configuredIndex(p, x.id)
			p.Backends = append(p.Backends[:i], p.Backends[i+1:]...)
		}},
		{name: "url", toMoved: true, change: func(p *config.Pool, x, moved *gated) {
			p.Backends[configuredIndex(p, x.id)].URL = moved.url
		}},
		// Its pin was the old balancer's: round-robin sends it where
		// there is room.
		{name: "balancer", unpinned: true, change: func(p *config.Pool, _, _ *gated) {
			p.Balancer = config.Balancer{Type: "round-robin"}
		}},
		// To a hash whose key the client does not send, and to a cookie
		// of another name, it is no client pinned anywhere either.
		{name: "hash without its key", unpinned: true, change: func(p *config.Pool, _, _ *gated) {
			p.Balancer = config.Balancer{Type: "consistent-hash", Options: balancer.Options{
				Hash: balancer.HashOptions{Key: "header:X-User", VirtualNodes: 100}}}
		}},
		{name: "cookie of another name", unpinned: true, change: func(p *config.Pool, _, _ *gated) {
			p.Balancer.Options.Cookie.Name = "other"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ga, gb, moved := startGated(t, "a"), startGated(t, "b"), startGated(t, "moved")
			s, u := startProxy(t, catchAll(queuedPool("cookie", 1, 100, time.Minute, ga, gb)), zap.NewNop())
			c := testutil.Client(t)
			pin, x, y := pinTo(t, c, u.String(), ga, gb)
			busy := sendTagged(t.Context(), c, u.String(), "busy", pin)
			hBusy := x.next(t)
			waiting := sendTagged(t.Context(), c, u.String(), "waiting", pin)
			waitQueued(t, s, 1, x.id, 1)
			repins := s.state.Load().pool("web").repins.Load()

			pc := queuedPool("cookie", 1, 100, time.Minute, ga, gb)
			tc.change(pc, x, moved)
			if err := s.Reload(catchAll(pc)); err != nil {
				t.Fatal(err)
			}
			to, sticky := y, uint64(1)
			if tc.toMoved {
				to, sticky = moved, 0
			}
			if tc.unpinned {
				sticky = 0
			}
			h := to.next(t)
			if h.tag != "waiting" {
				t.Fatalf("backend %s got %q, want the waiting client", to.id, h.tag)
			}
			close(h.release)
			if r := await(t, waiting); r.status != http.StatusOK || r.body != to.id {
				t.Errorf("waiting client: status %d from %q, want 200 from %q", r.status, r.body, to.id)
			}
			if got := s.state.Load().pool("web").repins.Load() - repins; got != sticky {
				t.Errorf("repins %d, want %d", got, sticky)
			}
			waitQueued(t, s, 0, "", 0)
			close(hBusy.release)
			await(t, busy)
		})
	}
}

// configuredIndex returns the position of the backend named name in p.
func configuredIndex(p *config.Pool, name string) int {
	for i, b := range p.Backends {
		if b.Name == name {
			return i
		}
	}
	return -1
}

// TestQueueReadded: a backend a reload removes while a request runs on it
// and the next adds back counts that request against its max_conns: the
// next request waits for it, and the backend never has more than max_conns
// in flight.
func TestQueueReadded(t *testing.T) {
	ga, gb := startGated(t, "a"), startGated(t, "b")
	s, u := startProxy(t, catchAll(queuedPool("round-robin", 1, 100, time.Minute, ga)), zap.NewNop())
	c := testutil.Client(t)
	old := sendTagged(t.Context(), c, u.String(), "old", nil)
	hOld := ga.next(t)
	for _, gs := range [][]*gated{{gb}, {ga}} {
		if err := s.Reload(catchAll(queuedPool("round-robin", 1, 100, time.Minute, gs...))); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.state.Load().pool("web").backends[0].InFlight(); n != 1 {
		t.Errorf("in flight on the backend added back: %d, want 1", n)
	}
	if removed := s.leaving.current(); len(removed) != 0 {
		t.Errorf("still shown as removed: %v", removed)
	}
	next := sendTagged(t.Context(), c, u.String(), "next", nil)
	waitQueued(t, s, 1, "", 0)
	close(hOld.release)
	await(t, old)
	h := ga.next(t)
	if h.tag != "next" {
		t.Fatalf("got %q, want next", h.tag)
	}
	close(h.release)
	await(t, next)
	if p := ga.peak.Load(); p != 1 {
		t.Errorf("peak in flight %d, want 1 (max_conns)", p)
	}
}

// TestQueueRemovedTakesNoWaiter: a place that frees on a backend a reload
// removed (its request of before ends) goes to no waiter: the backend takes
// no new request, and the waiter goes to a backend of the pool.
func TestQueueRemovedTakesNoWaiter(t *testing.T) {
	for _, kind := range []string{"round-robin", "cookie"} {
		t.Run(kind, func(t *testing.T) {
			ga, gb := startGated(t, "a"), startGated(t, "b")
			s, u := startProxy(t, catchAll(queuedPool(kind, 1, 100, time.Minute, ga, gb)), zap.NewNop())
			c := testutil.Client(t)
			first := sendTagged(t.Context(), c, u.String(), "first", nil)
			second := sendTagged(t.Context(), c, u.String(), "second", nil)
			held := map[string]heldRequest{}
			for _, g := range []*gated{ga, gb} {
				held[g.id] = g.next(t)
			}
			waiting := sendTagged(t.Context(), c, u.String(), "waiting", nil)
			waitQueued(t, s, 1, "", 0)

			if err := s.Reload(catchAll(queuedPool(kind, 1, 100, time.Minute, gb))); err != nil {
				t.Fatal(err)
			}
			close(held["a"].release)
			select {
			case h := <-ga.held:
				t.Fatalf("removed backend got the request %q", h.tag)
			case <-time.After(100 * time.Millisecond):
			}
			waitQueued(t, s, 1, "", 0)
			close(held["b"].release)
			h := gb.next(t)
			if h.tag != "waiting" {
				t.Fatalf("backend b got %q, want the waiting request", h.tag)
			}
			close(h.release)
			if r := await(t, waiting); r.status != http.StatusOK || r.body != "b" {
				t.Errorf("waiting request: status %d from %q, want 200 from b", r.status, r.body)
			}
			await(t, first)
			await(t, second)
		})
	}
}

// TestQueueMovesKeepTimeout: a pinned waiter a reload sends back to the
// balancer (its balancer changed) waits for what is left of its
// queue.timeout, not a new one, however many reloads come; its access line
// tells the whole wait once, no more than the request's duration.
func TestQueueMovesKeepTimeout(t *testing.T) {
	const timeout = 500 * time.Millisecond
	ga, gb := startGated(t, "a"), startGated(t, "b")
	cfg := catchAll(queuedPool("cookie", 1, 100, timeout, ga, gb))
	cfg.Log.Access = true
	log, logs := observed()
	s, u := startProxy(t, cfg, log)
	c := testutil.Client(t)
	pin, x, y := pinTo(t, c, u.String(), ga, gb)
	// Both full: the waiter finds no room wherever it is sent.
	busyX := sendTagged(t.Context(), c, u.String(), "busy-x", pin)
	hx := x.next(t)
	busyY := sendTagged(t.Context(), c, u.String(), "busy-y", nil)
	hy := y.next(t)
	waiting := sendTagged(t.Context(), c, u.String(), "waiting", pin)
	waitQueued(t, s, 1, x.id, 1)

	// A reload every 100 ms, each changing the balancer: each sends the
	// waiter back to it. A timeout started over at each would never end
	// while they go on; the waiter's ends within them.
	var r result
	deadline := time.Now().Add(20 * timeout)
	for i := 0; r.tag == ""; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("the waiter was not answered within %s of reloads, 20 times its queue.timeout", 20*timeout)
		}
		p := queuedPool("cookie", 1, 100, timeout, ga, gb)
		p.Balancer.Options.Cookie.MaxAge = i % 2 * 3600
		if err := s.Reload(catchAll(p)); err != nil {
			t.Fatal(err)
		}
		select {
		case r = <-waiting:
		case <-time.After(100 * time.Millisecond):
		}
	}
	if r.err != nil || r.status != http.StatusServiceUnavailable {
		t.Fatalf("waiter: %+v, want 503 at its queue.timeout", r)
	}
	close(hx.release)
	close(hy.release)
	await(t, busyX)
	await(t, busyY)

	var line map[string]any
	testutil.Eventually(t, waitFor, "the waiter's access line", func() bool {
		for _, e := range logs.FilterMessage("request").All() {
			if f := e.ContextMap(); f["refused"] == "queue-timeout" {
				line = f
				return true
			}
		}
		return false
	})
	queued, _ := line["queued"].(time.Duration)
	took, _ := line["duration"].(time.Duration)
	if queued < timeout || queued > took {
		t.Errorf("access line: queued %s, duration %s: want at least queue.timeout %s, at most the duration", queued, took, timeout)
	}
}
