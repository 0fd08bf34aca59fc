package proxy

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/resolver"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// startAt serves a testutil-like backend named id on addr, answering its
// name, until the test ends.
func startAt(t *testing.T, addr, id string) *atomic.Int64 {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	hits := new(atomic.Int64)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		w.Header().Set(testutil.IDHeader, id)
		_, _ = fmt.Fprint(w, id)
	}))
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return hits
}

// sharedPort returns a port free on each of hosts (loopback addresses) a
// moment ago.
func sharedPort(t *testing.T, hosts ...string) string {
	t.Helper()
	for range 20 {
		_, port, err := net.SplitHostPort(testutil.FreeAddr(t))
		if err != nil {
			t.Fatal(err)
		}
		free := true
		for _, h := range hosts {
			ln, err := net.Listen("tcp", net.JoinHostPort(h, port))
			if err != nil {
				free = false
				break
			}
			_ = ln.Close()
		}
		if free {
			return port
		}
	}
	t.Fatal("no port free on every address")
	return ""
}

// discoverPool is a pool of kind that discovers its backends from name on
// the DNS server at resolver, looked up every 50ms.
func discoverPool(kind string, o balancer.Options, name, typ string, port int, resolver string) *config.Pool {
	return &config.Pool{Name: "web", Balancer: config.Balancer{Type: kind, Options: o}, Discover: &config.Discover{
		DNS: name, Type: typ, Port: port, Scheme: "http", Interval: 50 * time.Millisecond,
		Resolver: resolver, DrainTimeout: time.Minute,
	}}
}

// setGoneIdle sets how long a backend that left DNS must be idle to be
// removed.
func setGoneIdle(s *Server, d time.Duration) {
	s.reloadMu.Lock()
	s.goneIdle = d
	s.reloadMu.Unlock()
}

// viewOf returns the backends of the pool in service, by name.
func viewOf(s *Server, pool string) map[string]backendView {
	out := map[string]backendView{}
	if p := s.state.Load().pool(pool); p != nil {
		for _, v := range p.view() {
			out[v.backend.ID] = v
		}
	}
	return out
}

// user is a client with its own cookies, and the backend it was pinned to.
type user struct {
	c       *http.Client
	backend string
}

// visit sends one request as u, and returns the backend that answered; a
// failure is reported on errs.
func (u *user) visit(target string) (string, error) {
	resp, err := u.c.Get(target)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d", resp.StatusCode)
	}
	return resp.Header.Get(testutil.IDHeader), nil
}

// newUsers sends one request for each of n new users, and returns them
// with their backends.
func newUsers(t *testing.T, target string, n int) []*user {
	t.Helper()
	out := make([]*user, n)
	for i := range out {
		u := &user{c: jarClient(t)}
		b, err := u.visit(target)
		if err != nil {
			t.Fatalf("new user %d: %v", i, err)
		}
		u.backend = b
		out[i] = u
	}
	return out
}

// load keeps users visiting, each staying on its backend, until stop;
// every failure and every move is an error it returns. Its rounds are
// bounded in number and time.
func load(target string, users []*user) (stop func() []error) {
	var (
		mu   sync.Mutex
		errs []error
		done = make(chan struct{})
		wg   sync.WaitGroup
	)
	deadline := time.Now().Add(time.Minute)
	wg.Go(func() {
		for round := 0; round < 10000 && time.Now().Before(deadline); round++ {
			select {
			case <-done:
				return
			default:
			}
			for i, u := range users {
				b, err := u.visit(target)
				if err == nil && b != u.backend {
					err = fmt.Errorf("moved from %s to %s", u.backend, b)
				}
				if err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("round %d, user %d: %w", round, i, err))
					mu.Unlock()
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	return func() []error {
		close(done)
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return errs
	}
}

// TestDiscoveryFollowsDNS follows a real DNS server's A records under load:
// an address joins, one that leaves drains (its users stay, no new one
// goes there), comes back at once when listed again, and is removed once
// idle; no request fails and no user moves meanwhile.
func TestDiscoveryFollowsDNS(t *testing.T) {
	port := sharedPort(t, "127.0.0.2", "127.0.0.3")
	startAt(t, "127.0.0.2:"+port, "b2")
	startAt(t, "127.0.0.3:"+port, "b3")
	n2, n3 := "127.0.0.2:"+port, "127.0.0.3:"+port
	both := []string{"127.0.0.2 app.test", "127.0.0.3 app.test"}
	only2 := []string{"127.0.0.2 app.test"}
	d := testutil.StartDNS(t, only2, nil)
	log, logs := observed()
	var p int
	fmt.Sscan(port, &p)
	s, u := startProxy(t, catchAll(discoverPool("cookie", cookieOptions(), "app.test", config.DiscoverA, p, d.Addr)), log)
	target := u.String()
	// No backend is idle while users come, however slow the machine.
	setGoneIdle(s, time.Hour)
	if v := viewOf(s, "web"); len(v) != 1 || !v[n2].available {
		t.Fatalf("at start: backends %v, want %s only", v, n2)
	}

	// Join.
	d.SetHosts(both)
	testutil.Eventually(t, waitFor, n3+" joins", func() bool { return viewOf(s, "web")[n3].available })
	users := newUsers(t, target, 40)
	on := map[string]int{}
	for _, u := range users {
		on[u.backend]++
	}
	if on["b2"] == 0 || on["b3"] == 0 {
		t.Fatalf("new users by backend %v, want both", on)
	}

	// Leave: b3 drains under load.
	stop := load(target, users)
	d.SetHosts(only2)
	testutil.Eventually(t, waitFor, n3+" drains", func() bool {
		v, ok := viewOf(s, "web")[n3]
		return ok && v.stateName() == "drain" && v.stateSource() == "dns" && !v.available
	})
	for _, nu := range newUsers(t, target, 20) {
		if nu.backend != "b2" {
			t.Errorf("a new user went to %s while b3 drained", nu.backend)
		}
	}

	// Return, at once.
	d.SetHosts(both)
	testutil.Eventually(t, waitFor, n3+" returns", func() bool { return viewOf(s, "web")[n3].available })
	for _, err := range stop() {
		t.Error(err)
	}

	// Leave again, and idle: removed; its users move to b2.
	setGoneIdle(s, 100*time.Millisecond)
	d.SetHosts(only2)
	testutil.Eventually(t, waitFor, n3+" is removed once idle", func() bool {
		_, ok := viewOf(s, "web")[n3]
		return !ok
	})
	for _, u := range users {
		if b, err := u.visit(target); err != nil || b != "b2" {
			t.Errorf("after b3 was removed, a user got %q, %v; want b2", b, err)
		}
	}
	for msg, want := range map[string]int{
		"backend discovered": 2, "backend left DNS; draining": 2,
		"backend listed again; it takes new clients": 1, "backend removed: it left DNS and is drained": 1,
	} {
		if got := len(entries(logs, msg)); got != want {
			t.Errorf("%q logged %d times, want %d", msg, got, want)
			for _, e := range entries(logs, msg) {
				t.Log(e.Time.Format("15:04:05.000"), e.ContextMap())
			}
		}
	}
	if e := entries(logs, "backend removed: it left DNS and is drained"); len(e) == 1 && e[0].ContextMap()["reason"] != "idle" {
		t.Errorf("removed for %v, want idle", e[0].ContextMap()["reason"])
	}
}

// TestDiscoveryKeepsLastAnswer: a resolver down, and an answer without
// records, leave the pool as it was; each streak is logged once, counted,
// and shown.
func TestDiscoveryKeepsLastAnswer(t *testing.T) {
	port := sharedPort(t, "127.0.0.2", "127.0.0.3")
	startAt(t, "127.0.0.2:"+port, "b2")
	startAt(t, "127.0.0.3:"+port, "b3")
	d := testutil.StartDNS(t, []string{"127.0.0.2 app.test", "127.0.0.3 app.test"}, nil)
	log, logs := observed()
	var p int
	fmt.Sscan(port, &p)
	s, u := startProxy(t, catchAll(discoverPool("round-robin", balancer.Options{}, "app.test", config.DiscoverA, p, d.Addr)), log)
	disc := s.state.Load().pool("web").discovery
	for _, tt := range []struct {
		name   string
		break_ func()
		mend   func()
	}{
		{"resolver down", d.Stop, d.Start},
		{"no records", func() { d.SetHosts([]string{"127.0.0.9 other.test"}) },
			func() { d.SetHosts([]string{"127.0.0.2 app.test", "127.0.0.3 app.test"}) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := disc.errors.Load()
			failed := len(entries(logs, "discovery lookup failed; the backends known keep serving"))
			tt.break_()
			testutil.Eventually(t, waitFor, "lookups fail", func() bool { return disc.errors.Load() >= before+3 })
			st := disc.status(time.Now(), 2)
			if st.Failing == "" || st.AgeSeconds == nil {
				t.Errorf("status while failing = %+v, want the error and the age of the last answer", st)
			}
			seen := map[string]bool{}
			for range 10 {
				r := get(t, testutil.Client(t), u.String(), nil)
				if r.status != http.StatusOK {
					t.Fatalf("while lookups fail: status %d", r.status)
				}
				seen[r.header.Get(testutil.IDHeader)] = true
			}
			if !seen["b2"] || !seen["b3"] {
				t.Errorf("while lookups fail, served by %v; want both backends known", seen)
			}
			if got := len(entries(logs, "discovery lookup failed; the backends known keep serving")); got != failed+1 {
				t.Errorf("failure logged %d times in a streak, want once", got-failed)
			}
			tt.mend()
			testutil.Eventually(t, waitFor, "lookups answer", func() bool { return disc.status(time.Now(), 2).Failing == "" })
		})
	}
	if v := viewOf(s, "web"); len(v) != 2 || !v["127.0.0.2:"+port].available || !v["127.0.0.3:"+port].available {
		t.Errorf("after the failures: %v, want both backends available", v)
	}
	if n := len(entries(logs, "backend left DNS; draining")); n != 0 {
		t.Errorf("a failed lookup drained %d backends", n)
	}
}

// TestDiscoverySRV takes targets, ports and weights from SRV records, and
// follows a change of weights; a record of a higher priority is a backup,
// left out.
func TestDiscoverySRV(t *testing.T) {
	a1, a2 := testutil.FreeAddr(t), testutil.FreeAddr(t)
	startAt(t, a1, "b1")
	startAt(t, a2, "b2")
	_, p1, _ := net.SplitHostPort(a1)
	_, p2, _ := net.SplitHostPort(a2)
	hosts := []string{"127.0.0.1 b1.test", "127.0.0.1 b2.test", "127.0.0.1 backup.test"}
	srv := func(w1, w2 int) []string {
		return []string{
			fmt.Sprintf("_http._tcp.app.test,b1.test,%s,0,%d", p1, w1),
			fmt.Sprintf("_http._tcp.app.test,b2.test,%s,0,%d", p2, w2),
			fmt.Sprintf("_http._tcp.app.test,backup.test,%s,1,100", p1),
		}
	}
	d := testutil.StartDNS(t, hosts, srv(10, 30))
	s, u := startProxy(t, catchAll(discoverPool("round-robin", balancer.Options{}, "_http._tcp.app.test", config.DiscoverSRV, 0, d.Addr)), nil)
	n1, n2 := "b1.test:"+p1, "b2.test:"+p2
	weights := func() map[string]int {
		out := map[string]int{}
		for name, v := range viewOf(s, "web") {
			out[name] = v.backend.Weight
		}
		return out
	}
	// The first lookup may time out on a busy machine; the next ones
	// fill the pool.
	testutil.Eventually(t, waitFor, "the SRV targets join", func() bool { return len(weights()) > 0 })
	if w := weights(); len(w) != 2 || w[n1] != 1 || w[n2] != 3 {
		t.Fatalf("weights %v, want %s 1 and %s 3 (10 and 30 divided by 10), no backup", w, n1, n2)
	}
	count := map[string]int{}
	for range 400 {
		count[get(t, testutil.Client(t), u.String(), nil).header.Get(testutil.IDHeader)]++
	}
	if count["b1"] != 100 || count["b2"] != 300 {
		t.Errorf("requests by backend %v, want b1 100 and b2 300", count)
	}
	d.SetSRV(srv(50, 50))
	testutil.Eventually(t, waitFor, "weights follow the records", func() bool {
		w := weights()
		return w[n1] == 1 && w[n2] == 1
	})
}

func TestSRVWeights(t *testing.T) {
	tests := []struct {
		srv  bool
		in   []int
		want []int
	}{
		{true, []int{10, 30}, []int{1, 3}},
		{true, []int{33, 33, 33}, []int{1, 1, 1}},
		{true, []int{0, 5}, []int{1, 5}},
		{true, []int{65535, 655}, []int{1000, 9}},
		{true, []int{2000, 1000}, []int{2, 1}},
		{true, []int{65535, 1}, []int{1000, 1}},
		{false, []int{7, 9}, []int{1, 1}},
	}
	for _, tt := range tests {
		backends := map[string]*found{}
		for i, w := range tt.in {
			backends[fmt.Sprint(i)] = &found{weight: w}
		}
		srvWeights(backends, tt.srv)
		var got []int
		for i := range tt.in {
			got = append(got, backends[fmt.Sprint(i)].weight)
		}
		if fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("srvWeights(%v, %v) = %v, want %v", tt.in, tt.srv, got, tt.want)
		}
	}
}

// TestStatusPageDiscovery: the status page tells what a pool looks up, the
// age of the last answer and a failure going on.
func TestStatusPageDiscovery(t *testing.T) {
	now := time.Now()
	last := now.Add(-42 * time.Second)
	doc := statusDoc{Time: now, Pools: []poolStatus{{Name: "web", Balancer: "cookie", Discovery: &discoveryStatus{
		DNS: "app.test", Type: "A", LastAnswer: &last, Errors: 7, Failing: "app.test A: no records", Listed: 2,
	}}}}
	var b strings.Builder
	if err := statusPage.Execute(&b, doc); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"DNS A app.test: 2 listed", "answered 42s ago", "7 failed lookups", "failing: app.test A: no records"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("page lacks %q", want)
		}
	}
}

// TestDiscoveryRefusesSelf: records that point at the proxy's own listener
// or admin listener (any address of the host, for one on the unspecified
// address) are not backends; they are logged once and counted.
func TestDiscoveryRefusesSelf(t *testing.T) {
	port := sharedPort(t, "127.0.0.2")
	startAt(t, "127.0.0.2:"+port, "b2")
	listen, admin := sharedPort(t, "127.0.0.1"), sharedPort(t, "127.0.0.1")
	hosts := []string{"127.0.0.2 a.test", "127.0.0.1 self.test", "127.0.0.3 adm.test"}
	d := testutil.StartDNS(t, hosts, []string{
		"_http._tcp.app.test,a.test," + port + ",0,10",
		"_http._tcp.app.test,self.test," + listen + ",0,10",
		"_http._tcp.app.test,adm.test," + admin + ",0,10",
	})
	log, logs := observed()
	cfg := catchAll(discoverPool("round-robin", balancer.Options{}, "_http._tcp.app.test", config.DiscoverSRV, 0, d.Addr))
	cfg.Listen = "127.0.0.1:" + listen
	cfg.Admin.Listen = "0.0.0.0:" + admin
	s, _ := startProxy(t, cfg, log)
	testutil.Eventually(t, waitFor, "a second lookup", func() bool { return s.discovery["web"].refused.Load() >= 4 })
	if v := viewOf(s, "web"); len(v) != 1 || !v["a.test:"+port].available {
		t.Errorf("backends %v, want a.test:%s only", v, port)
	}
	if got := len(entries(logs, "discovered record refused: it is this proxy's own listen or admin address")); got != 2 {
		t.Errorf("refusals logged %d times, want 2 (once per record)", got)
	}
}

// TestDiscoveryKeepsOperatorState: a state an operator set at run time on a
// discovered backend holds when DNS drops the record until the backend is
// removed and then lists it again, and when an SRV target moves to a new
// address; each carry is logged.
func TestDiscoveryKeepsOperatorState(t *testing.T) {
	port := sharedPort(t, "127.0.0.2", "127.0.0.3")
	startAt(t, "127.0.0.2:"+port, "b2")
	startAt(t, "127.0.0.3:"+port, "b3")
	tests := []struct {
		name   string
		typ    string
		dns    string
		hosts  []string
		srv    []string
		change func(d *testutil.DNS)
		back   func(d *testutil.DNS)
		id     string
		url    string // the backend's address once back
	}{
		{name: "A record dropped and listed again", typ: config.DiscoverA, dns: "app.test",
			hosts:  []string{"127.0.0.2 app.test", "127.0.0.3 app.test"},
			change: func(d *testutil.DNS) { d.SetHosts([]string{"127.0.0.2 app.test"}) },
			back:   func(d *testutil.DNS) { d.SetHosts([]string{"127.0.0.2 app.test", "127.0.0.3 app.test"}) },
			id:     "127.0.0.3:" + port, url: "127.0.0.3:" + port},
		{name: "SRV target at a new address", typ: config.DiscoverSRV, dns: "_http._tcp.app.test",
			hosts: []string{"127.0.0.2 a.test", "127.0.0.3 b.test"},
			srv:   []string{"_http._tcp.app.test,a.test," + port + ",0,10", "_http._tcp.app.test,b.test," + port + ",0,10"},
			back:  func(d *testutil.DNS) { d.SetHosts([]string{"127.0.0.2 a.test", "127.0.0.2 b.test"}) },
			id:    "b.test:" + port, url: "127.0.0.2:" + port},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := testutil.StartDNS(t, tt.hosts, tt.srv)
			log, logs := observed()
			p := 0
			if tt.typ != config.DiscoverSRV {
				fmt.Sscan(port, &p)
			}
			s, _ := startProxy(t, catchAll(discoverPool("round-robin", balancer.Options{}, tt.dns, tt.typ, p, d.Addr)), log)
			setGoneIdle(s, 0)
			if _, err := s.state.Load().pool("web").setState(tt.id, config.StateMaint, "127.0.0.1:1"); err != nil {
				t.Fatal(err)
			}
			if tt.change != nil {
				tt.change(d)
				testutil.Eventually(t, waitFor, tt.id+" is removed", func() bool {
					_, ok := viewOf(s, "web")[tt.id]
					return !ok
				})
			}
			tt.back(d)
			testutil.Eventually(t, waitFor, tt.id+" at "+tt.url, func() bool {
				v, ok := viewOf(s, "web")[tt.id]
				return ok && v.backend.URL.Host == tt.url
			})
			if v := viewOf(s, "web")[tt.id]; v.stateName() != "maint" || v.stateSource() != "api" || v.available {
				t.Errorf("%s is %s (%s), available %v; want maint (api)", tt.id, v.stateName(), v.stateSource(), v.available)
			}
			if n := len(entries(logs, "backend state set at run time carried over")); n != 1 {
				t.Errorf("carry logged %d times, want 1", n)
			}
			if n := len(entries(logs, "backend state set at run time dropped: the backend's URL changed")); n != 0 {
				t.Errorf("the carried state logged as dropped %d times", n)
			}
		})
	}
}

// TestDiscoveryBound: an answer of more records than maxDiscovered makes
// maxDiscovered backends, those known before kept first; the rest are
// counted, and logged once while answers stay over the limit.
func TestDiscoveryBound(t *testing.T) {
	log, logs := observed()
	d, err := newDiscoverer("web", config.Discover{DNS: "app.test", Type: config.DiscoverA, Port: 80, Scheme: "http",
		Interval: time.Second, Resolver: "127.0.0.1:53"}, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	answer := func(first, n int) []resolver.Record {
		var out []resolver.Record
		for i := first; i < first+n; i++ {
			out = append(out, resolver.Record{Addr: netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})})
		}
		return out
	}
	now := time.Now()
	d.merge(answer(1000, 10), nil, now)
	d.merge(answer(0, 1010), nil, now)
	d.merge(answer(0, 1010), nil, now)
	if len(d.known) != maxDiscovered {
		t.Fatalf("%d backends, want %d", len(d.known), maxDiscovered)
	}
	if _, ok := d.known["10.0.3.232:80"]; !ok {
		t.Error("a backend known before the large answer was dropped")
	}
	if got, want := d.ignored.Load(), uint64(2*(1010-maxDiscovered)); got != want {
		t.Errorf("ignored %d, want %d", got, want)
	}
	if n := len(entries(logs, "discovered backends over the limit; the others are ignored")); n != 1 {
		t.Errorf("logged %d times, want once", n)
	}
}

// TestDiscoveryFirstLookupsAtOnce: the first lookups of several pools run
// together. The DNS server here answers nobody until it has been asked
// for every pool's name, then SERVFAIL to all: lookups made one after the
// other would each wait for an answer that comes only once the others
// have asked, and time out.
func TestDiscoveryFirstLookupsAtOnce(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	const pools = 4
	go func() {
		type query struct {
			from net.Addr
			msg  *dns.Msg
		}
		var waiting []query
		names := map[string]bool{}
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			m := new(dns.Msg)
			if m.Unpack(buf[:n]) != nil || len(m.Question) != 1 {
				continue
			}
			names[m.Question[0].Name] = true
			waiting = append(waiting, query{from, m})
			if len(names) < pools {
				continue
			}
			for _, q := range waiting {
				r := new(dns.Msg)
				r.SetRcode(q.msg, dns.RcodeServerFailure)
				if b, err := r.Pack(); err == nil {
					_, _ = pc.WriteTo(b, q.from)
				}
			}
			waiting = nil
		}
	}()
	cfg := &config.Config{Listen: "127.0.0.1:0", Timeouts: testTimeouts}
	for i := range pools {
		p := discoverPool("round-robin", balancer.Options{}, fmt.Sprintf("app%d.test", i), config.DiscoverA, 80, pc.LocalAddr().String())
		p.Name = fmt.Sprintf("p%d", i)
		p.Discover.Interval = time.Minute
		cfg.Pools = append(cfg.Pools, p)
		cfg.Routes = append(cfg.Routes, config.Route{Match: config.Match{Path: fmt.Sprintf("/p%d/", i)}, Pool: p.Name})
	}
	log, logs := observed()
	if _, err := NewServer(cfg, log); err != nil {
		t.Fatal(err)
	}
	failed := entries(logs, "discovery lookup failed; the backends known keep serving")
	if len(failed) != pools {
		t.Fatalf("%d lookups failed, want %d", len(failed), pools)
	}
	for _, e := range failed {
		if msg := fmt.Sprint(e.ContextMap()["error"]); !strings.Contains(msg, "SERVFAIL") {
			t.Errorf("pool %v: %s; want SERVFAIL, which comes once every pool has asked", e.ContextMap()["pool"], msg)
		}
	}
}

// TestDiscoveryRecordsShown: the status shows the latest error of a
// failing streak, the log its first; a type A pool logs an AAAA record as
// one.
func TestDiscoveryRecordsShown(t *testing.T) {
	log, logs := observed()
	d, err := newDiscoverer("web", config.Discover{DNS: "app.test", Type: config.DiscoverA, Port: 80, Scheme: "http",
		Interval: time.Second, Resolver: "127.0.0.1:53"}, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	d.merge(nil, fmt.Errorf("first"), now)
	d.merge(nil, fmt.Errorf("second"), now)
	if st := d.status(now, 0); st.Failing != "second" {
		t.Errorf("failing %q, want the latest error", st.Failing)
	}
	d.merge([]resolver.Record{{Addr: netip.MustParseAddr("10.0.0.1")}, {Addr: netip.MustParseAddr("fd00::1")}}, nil, now)
	if st := d.status(now, 0); st.Failing != "" {
		t.Errorf("failing %q after an answer", st.Failing)
	}
	got := map[string]bool{}
	for _, e := range entries(logs, "backend discovered") {
		got[fmt.Sprint(e.ContextMap()["record"])] = true
	}
	if !got["A 10.0.0.1"] || !got["AAAA fd00::1"] {
		t.Errorf("records logged %v, want A 10.0.0.1 and AAAA fd00::1", got)
	}
}

// TestDiscoveryMaxConns: discover.max_conns bounds each discovered backend
// as backends[].max_conns does a listed one; a request past it waits in
// the pool's queue.
func TestDiscoveryMaxConns(t *testing.T) {
	g := startGated(t, "a")
	host, portText, err := net.SplitHostPort(g.url.Host)
	if err != nil {
		t.Fatal(err)
	}
	var port int
	fmt.Sscan(portText, &port)
	d := testutil.StartDNS(t, []string{host + " app.test"}, nil)
	p := discoverPool("round-robin", balancer.Options{}, "app.test", config.DiscoverA, port, d.Addr)
	p.Discover.MaxConns = 1
	p.Queue = config.Queue{Max: 10, Timeout: time.Minute}
	s, u := startProxy(t, catchAll(p), nil)
	c := testutil.Client(t)
	first := sendTagged(t.Context(), c, u.String(), "1", nil)
	h1 := g.next(t)
	second := sendTagged(t.Context(), c, u.String(), "2", nil)
	waitQueued(t, s, 1, "", 0)
	close(h1.release)
	close(g.next(t).release)
	for _, ch := range []<-chan result{first, second} {
		if r := await(t, ch); r.status != http.StatusOK {
			t.Errorf("request %s: status %d", r.tag, r.status)
		}
	}
	if peak := g.peak.Load(); peak != 1 {
		t.Errorf("backend had %d requests in flight at most, want discover.max_conns 1", peak)
	}
}
