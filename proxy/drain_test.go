package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest/observer"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// putState sets pool/backend's state through the admin API at admin,
// with token as the bearer token when not empty, and returns the status
// and the body.
func putState(t *testing.T, admin, pool, backend, body, token string) (int, string) {
	t.Helper()
	u := admin + "/api/v1/pools/" + url.PathEscape(pool) + "/backends/" + url.PathEscape(backend) + "/state"
	req, err := http.NewRequest(http.MethodPut, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := testutil.Client(t).Do(req)
	if err != nil {
		t.Fatalf("PUT %s: %v", u, err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("PUT %s: Content-Type %q, want JSON", u, ct)
	}
	return resp.StatusCode, buf.String()
}

// mustSetState sets a state that must be accepted, and checks the answer.
func mustSetState(t *testing.T, admin, pool, backend string, st config.State) backendStatus {
	t.Helper()
	code, body := putState(t, admin, pool, backend, `{"state": "`+string(st)+`"}`, "")
	if code != http.StatusOK {
		t.Fatalf("set %s/%s %s: %d %s", pool, backend, st, code, body)
	}
	var bs backendStatus
	if err := json.Unmarshal([]byte(body), &bs); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	if bs.Name != backend || bs.State != string(st) || bs.StateSource != "api" {
		t.Fatalf("answer %+v, want %s in state %s set by the api", bs, backend, st)
	}
	return bs
}

// drainClient is a client of a pool under test: it reaches the proxy the
// way the pool's balancer pins it, and reports the backend that answered.
type drainClient func(t *testing.T) string

// TestDrainStates checks each balancer through the proxy and the admin
// API: while b1 drains, the clients pinned to it keep reaching it and no
// new client does; in maintenance its clients move, each once; ready
// again, it takes new clients.
func TestDrainStates(t *testing.T) {
	tests := []struct {
		kind string
		// pins: the balancer keeps a client on its backend.
		pins bool
		opts balancer.Options
		// back: b1's clients go back to it once it is ready again, as
		// hash keys do; cookie and learn clients stay where they moved.
		back bool
	}{
		{"cookie", true, cookieOptions(), false},
		{"learn", true, learnOptions(), false},
		{"consistent-hash", true, balancer.Options{Hash: balancer.HashOptions{Key: "header:X-User", VirtualNodes: 160}}, true},
		{"round-robin", false, balancer.Options{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.kind, func(t *testing.T) {
			pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: tt.kind, Options: tt.opts},
				Backends: startSessionApps(t, "b0", "b1", "b2"), Retries: config.DefaultRetries()}
			_, proxyURL, admin := startWithAdmin(t, catchAll(pc), nil)
			users := 0
			newClient := func() drainClient {
				users++
				c, user := jarClient(t), "user-"+strconv.Itoa(users)
				return func(t *testing.T) string {
					r := get(t, c, proxyURL.String()+"/", func(req *http.Request) {
						req.Header.Set("X-User", user)
					})
					if r.status != http.StatusOK {
						t.Fatalf("%s: status %d %s", user, r.status, r.body)
					}
					return r.body
				}
			}
			keyless := func() drainClient {
				c := jarClient(t)
				return func(t *testing.T) string { return get(t, c, proxyURL.String()+"/", nil).body }
			}
			const n = 30
			clients := make([]drainClient, n)
			home := make([]string, n)
			for i := range clients {
				clients[i] = newClient()
				home[i] = clients[i](t)
			}

			mustSetState(t, admin, "web", "b1", config.StateDrain)
			for i, c := range clients {
				for range 3 {
					if got := c(t); tt.pins && got != home[i] {
						t.Fatalf("client %d of %s went to %s while b1 drains", i, home[i], got)
					}
				}
			}
			for range 2 * n {
				c := newClient
				if tt.kind == "consistent-hash" {
					// A key b1 owns is pinned to b1 from the start: a
					// new client of consistent-hash is one without.
					c = keyless
				}
				if got := c()(t); got == "b1" {
					t.Fatal("a new client was sent to the draining b1")
				}
			}
			if !tt.pins {
				for range 2 * n {
					if got := clients[0](t); got == "b1" {
						t.Fatal("round-robin sent a request to the draining b1")
					}
				}
			}

			mustSetState(t, admin, "web", "b1", config.StateMaint)
			moved := map[int]string{}
			for i, c := range clients {
				got := c(t)
				if got == "b1" {
					t.Fatalf("client %d went to b1 in maintenance", i)
				}
				if home[i] == "b1" {
					moved[i] = got
				} else if tt.pins && got != home[i] {
					t.Fatalf("client %d of %s moved to %s when b1 went into maintenance", i, home[i], got)
				}
			}
			for i, to := range moved {
				for range 3 {
					if got := clients[i](t); tt.pins && got != to {
						t.Fatalf("client %d of b1 moved to %s, then to %s", i, to, got)
					}
				}
			}

			mustSetState(t, admin, "web", "b1", config.StateReady)
			fresh := 0
			for range 2 * n {
				if newClient()(t) == "b1" {
					fresh++
				}
			}
			if fresh == 0 {
				t.Error("no new client reached b1 once it was ready again")
			}
			if !tt.pins {
				return
			}
			for i, to := range moved {
				want := to
				if tt.back {
					want = "b1"
				}
				if got := clients[i](t); got != want {
					t.Errorf("client %d of b1, moved to %s: sent to %s once b1 was ready, want %s", i, to, got, want)
				}
			}
		})
	}
}

// TestDrainEveryBackend: with every backend of a pool draining, pinned
// clients are still served and new ones are refused; /readyz says so.
func TestDrainEveryBackend(t *testing.T) {
	bs := startBackends(t, "b0", "b1")
	_, proxyURL, admin := startWithAdmin(t, catchAll(poolOf("web", "cookie", cookieOptions(), bs...)), nil)
	pinned := jarClient(t)
	home := get(t, pinned, proxyURL.String(), nil).body
	for _, b := range bs {
		mustSetState(t, admin, "web", b.ID, config.StateDrain)
	}
	if r := get(t, pinned, proxyURL.String(), nil); r.status != http.StatusOK || r.body != home {
		t.Errorf("pinned client with every backend draining: %d %q, want 200 from %s", r.status, r.body, home)
	}
	if r := get(t, jarClient(t), proxyURL.String(), nil); r.status != http.StatusServiceUnavailable {
		t.Errorf("new client with every backend draining: %d, want 503", r.status)
	}
	if code, body := fetch(t, testutil.Client(t), admin+"/readyz"); code != http.StatusServiceUnavailable ||
		!strings.Contains(body, `pool "web" has no available backend`) {
		t.Errorf("/readyz = %d %q", code, body)
	}
}

// TestStateOverReload: a state set at run time holds over reloads that
// leave the backend's configured state as it was, and gives way to one
// that changes it; each outcome is logged.
func TestStateOverReload(t *testing.T) {
	bs := startBackends(t, "b0", "b1")
	pc := func(b1 config.State, retries int) *config.Pool {
		p := poolOf("web", "cookie", cookieOptions(), bs...)
		p.Backends[1].State = b1
		p.Retries = config.Retries{Count: retries}
		return p
	}
	log, logs := observed()
	s, _, admin := startWithAdmin(t, catchAll(pc(config.StateReady, 1)), log)
	state := func() (string, string) {
		t.Helper()
		v := s.state.Load().pools[0].view()[1]
		return v.stateName(), v.source()
	}
	steps := []struct {
		name      string
		set       config.State // set at run time before the reload; "" for none
		b1        config.State // b1's state in the reloaded config
		want, src string
		log       string
	}{
		{"run-time drain kept", config.StateDrain, config.StateReady, "drain", "api",
			"backend state set at run time kept over the reload"},
		{"still kept", "", config.StateReady, "drain", "api",
			"backend state set at run time kept over the reload"},
		{"config changes b1", "", config.StateMaint, "maint", "config",
			"backend state changed by the reload, replacing the one set at run time"},
		{"run-time ready kept", config.StateReady, config.StateMaint, "ready", "api",
			"backend state set at run time kept over the reload"},
		{"config back to ready", "", config.StateReady, "ready", "config",
			"backend state changed by the reload, replacing the one set at run time"},
		{"config drains b1", "", config.StateDrain, "drain", "config", "backend state changed by the reload"},
	}
	for i, st := range steps {
		if st.set != "" {
			mustSetState(t, admin, "web", "b1", st.set)
		}
		before := logs.Len()
		reload(t, s, catchAll(pc(st.b1, i+2)))
		if got, src := state(); got != st.want || src != st.src {
			t.Fatalf("%s: b1 %s from %s, want %s from %s", st.name, got, src, st.want, st.src)
		}
		var msgs []string
		for _, e := range logs.All()[before:] {
			if strings.HasPrefix(e.Message, "backend state") {
				msgs = append(msgs, e.Message)
				if f := e.ContextMap(); f["backend"] != "b1" || f["state"] != st.want {
					t.Errorf("%s: logged %v", st.name, f)
				}
			}
		}
		if !slices.Equal(msgs, []string{st.log}) {
			t.Errorf("%s: logged %q, want %q", st.name, msgs, st.log)
		}
	}
}

// TestAPIErrors: every refusal is JSON with the right status, and changes
// nothing.
func TestAPIErrors(t *testing.T) {
	log, logs := observed()
	s, _, admin := startWithAdmin(t, catchAll(poolOf("web", "cookie", cookieOptions(), startBackends(t, "b0", "b1")...)), log)
	c := testutil.Client(t)
	tests := []struct {
		name, method, path, body string
		status                   int
		msg                      string
	}{
		{"unknown pool", "PUT", "/api/v1/pools/api/backends/b0/state", `{"state":"drain"}`, 404, `no pool "api"`},
		{"unknown backend", "PUT", "/api/v1/pools/web/backends/b9/state", `{"state":"drain"}`, 404, `pool "web" has no backend "b9"`},
		{"unknown state", "PUT", "/api/v1/pools/web/backends/b0/state", `{"state":"draining"}`, 400, `unknown state "draining"`},
		{"no state", "PUT", "/api/v1/pools/web/backends/b0/state", `{}`, 400, `no "state"`},
		{"not JSON", "PUT", "/api/v1/pools/web/backends/b0/state", `state=drain`, 400, "body: want"},
		{"unknown key", "PUT", "/api/v1/pools/web/backends/b0/state", `{"state":"drain","weight":2}`, 400, `unknown key "weight"`},
		{"key in capitals", "PUT", "/api/v1/pools/web/backends/b0/state", `{"STATE":"drain"}`, 400, `unknown key "STATE"`},
		{"key in another case beside it", "PUT", "/api/v1/pools/web/backends/b0/state", `{"state":"ready","State":"maint"}`, 400, `unknown key "State"`},
		{"key twice", "PUT", "/api/v1/pools/web/backends/b0/state", `{"state":"drain","state":"ready"}`, 400, `"state" given twice`},
		{"state an object", "PUT", "/api/v1/pools/web/backends/b0/state", `{"state":{"state":"drain"}}`, 400, `"state" is not a string`},
		{"an array", "PUT", "/api/v1/pools/web/backends/b0/state", `["state","drain"]`, 400, "not an object"},
		{"null", "PUT", "/api/v1/pools/web/backends/b0/state", `null`, 400, "not an object"},
		{"empty", "PUT", "/api/v1/pools/web/backends/b0/state", ``, 400, "body: want"},
		{"junk after", "PUT", "/api/v1/pools/web/backends/b0/state", `{"state":"drain"}]`, 400, "body: want"},
		{"two objects", "PUT", "/api/v1/pools/web/backends/b0/state", `{"state":"drain"}{"state":"ready"}`, 400, "one JSON object"},
		{"state not a string", "PUT", "/api/v1/pools/web/backends/b0/state", `{"state":1}`, 400, "body: want"},
		{"too large", "PUT", "/api/v1/pools/web/backends/b0/state", `{"state":"` + strings.Repeat("x", 2000) + `"}`, 400, "larger than"},
		{"read of a state", "GET", "/api/v1/pools/web/backends/b0/state", "", 405, "want PUT"},
		{"write to the list", "POST", "/api/v1/pools", "{}", 405, "want GET"},
		{"no such endpoint", "GET", "/api/v2/pools", "", 404, "no such endpoint"},
		{"unknown backend read", "GET", "/api/v1/pools/web/backends/b9", "", 404, `pool "web" has no backend "b9"`},
		{"unknown pool read", "GET", "/api/v1/pools/api/backends/b0", "", 404, `no pool "api"`},
	}
	for _, tt := range tests {
		req, err := http.NewRequest(tt.method, admin+tt.path, strings.NewReader(tt.body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var got struct{ Error string }
		err = json.NewDecoder(resp.Body).Decode(&got)
		resp.Body.Close()
		if resp.StatusCode != tt.status || err != nil || !strings.Contains(got.Error, tt.msg) ||
			resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s: %d %q (%v), want %d with %q in a JSON error", tt.name, resp.StatusCode, got.Error, err, tt.status, tt.msg)
		}
	}
	for _, v := range s.state.Load().pools[0].view() {
		if v.state != config.StateReady || v.source() != "config" {
			t.Errorf("%s is %s from %s after refused writes", v.backend.ID, v.state, v.source())
		}
	}
	writes := 0
	for _, tt := range tests {
		if tt.method == "PUT" {
			writes++
		}
	}
	refused := entries(logs, "admin API write refused")
	if len(refused) != writes {
		t.Errorf("%d refused writes logged, want %d", len(refused), writes)
	}
	for _, e := range refused {
		if !strings.HasPrefix(e.ContextMap()["client"].(string), "127.0.0.1:") {
			t.Errorf("refusal logged without the client: %v", e.ContextMap())
		}
	}
}

// TestAPIAuth: a configured token is required for writes, on any
// listener; without one, writes are open on loopback and refused on a
// listener reachable from other hosts. Reads stay open.
func TestAPIAuth(t *testing.T) {
	const token = "0123456789abcdef-token"
	tokenFile := t.TempDir() + "/token"
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		admin   config.Admin
		exposed bool
		send    string // bearer token sent; "" for none
		raw     string // Authorization header sent as is, instead
		status  int
	}{
		{"loopback, no token", config.Admin{}, false, "", "", 200},
		{"exposed, no token", config.Admin{}, true, "", "", 403},
		{"exposed, no token configured, one sent", config.Admin{}, true, token, "", 403},
		{"token, none sent", config.Admin{Token: token}, false, "", "", 401},
		{"token, wrong one", config.Admin{Token: token}, false, "0123456789abcdef-nope", "", 401},
		{"token, a prefix of it", config.Admin{Token: token}, false, token[:16], "", 401},
		{"token, basic auth", config.Admin{Token: token}, false, "", "Basic " + token, 401},
		{"token, right one", config.Admin{Token: token}, false, token, "", 200},
		{"token, lower-case scheme", config.Admin{Token: token}, false, "", "bearer " + token, 200},
		{"exposed, right token", config.Admin{Token: token}, true, token, "", 200},
		{"token file, right token", config.Admin{TokenFile: tokenFile}, true, token, "", 200},
		{"token file, wrong token", config.Admin{TokenFile: tokenFile}, true, "x" + token, "", 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, admin, logs := startAdminOf(t, tt.admin, tt.exposed)

			req, _ := http.NewRequest(http.MethodPut, admin+"/api/v1/pools/web/backends/b0/state", strings.NewReader(`{"state":"drain"}`))
			if tt.send != "" {
				req.Header.Set("Authorization", "Bearer "+tt.send)
			}
			if tt.raw != "" {
				req.Header.Set("Authorization", tt.raw)
			}
			resp, err := testutil.Client(t).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Fatalf("PUT = %d, want %d", resp.StatusCode, tt.status)
			}
			if tt.status == 401 && resp.Header.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
			want := config.StateReady
			if tt.status == 200 {
				want = config.StateDrain
			}
			if got := s.state.Load().pools[0].view()[0].state; got != want {
				t.Errorf("b0 is %s, want %s", got, want)
			}
			msg := "admin API write refused"
			if tt.status == 200 {
				msg = "backend state set"
			}
			if e := entries(logs, msg); len(e) != 1 || !strings.HasPrefix(e[0].ContextMap()["client"].(string), "127.0.0.1:") {
				t.Errorf("write logged as %v, want one %q with the client's address", e, msg)
			}
			if code, _ := fetch(t, testutil.Client(t), admin+"/api/v1/pools"); code != 200 {
				t.Errorf("GET /api/v1/pools = %d, want 200 without a token", code)
			}
		})
	}
	bad := catchAll(poolOf("web", "cookie", cookieOptions(), startBackends(t, "b0")...))
	bad.Admin.TokenFile = t.TempDir() + "/missing"
	if _, err := NewServer(bad, nil); err == nil || !strings.Contains(err.Error(), "admin.token_file") {
		t.Errorf("NewServer with a missing token file = %v, want an error naming admin.token_file", err)
	}
}

// startAdminOf serves pool "web" of one backend, b0, until the test ends,
// with admin settings c and the admin endpoints on a loopback listener
// reported as on every interface when exposed. It returns the server, the
// admin's base URL, and its logs.
func startAdminOf(t *testing.T, c config.Admin, exposed bool) (*Server, string, *observer.ObservedLogs) {
	t.Helper()
	cfg := catchAll(poolOf("web", "cookie", cookieOptions(), startBackends(t, "b0")...))
	cfg.Admin = c
	log, logs := observed()
	s, err := NewServer(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	ln := testutil.Listen(t)
	var served net.Listener = ln
	if exposed {
		// Reported as every interface, bound on loopback.
		served = addrListener{ln, &net.TCPAddr{IP: net.IPv4zero, Port: 9090}}
	}
	done := make(chan error, 1)
	go func() { done <- s.ServeAdmin(served) }()
	t.Cleanup(func() { <-done })
	testutil.Serve(t, s)
	return s, "http://" + ln.Addr().String(), logs
}

// TestDrainerTick runs the drainer's ticks at chosen times: a request
// that began before its backend left the ready state is closed
// drain_timeout after the change, one that began later drain_timeout after
// it began, and nothing else is.
func TestDrainerTick(t *testing.T) {
	log, logs := observed()
	s, err := NewServer(catchAll(poolOf("web", "round-robin", balancer.Options{}, startBackends(t, "b0", "b1")...)), log)
	if err != nil {
		t.Fatal(err)
	}
	p := s.state.Load().pools[0]
	b0, b1 := p.backends[0], p.backends[1]
	closed := map[string]bool{}
	request := func(name string, b *balancer.Backend) *client {
		c := &client{cancel: func() { closed[name] = true }}
		s.detached.add(c)
		c.begin(b)
		return c
	}
	const timeout = 10 * time.Second
	d := &drainer{s: s, seen: map[*client]sighting{}}
	old := request("old", b1)
	request("other", b0)
	d.tick(time.Now(), timeout) // every backend ready: nothing to watch
	v, _ := p.setState("b1", config.StateDrain, "test")
	at := func(d time.Duration) time.Time { return v.since.Add(d) }

	d.tick(at(time.Second), timeout)
	late := request("late", b1) // begins between two ticks
	d.tick(at(2*time.Second), timeout)
	if len(closed) != 0 {
		t.Fatalf("closed %v before drain_timeout", closed)
	}
	d.tick(at(timeout-time.Millisecond), timeout)
	if len(closed) != 0 {
		t.Fatalf("closed %v a millisecond before drain_timeout", closed)
	}
	d.tick(at(timeout), timeout)
	if !closed["old"] || len(closed) != 1 {
		t.Fatalf("at drain_timeout closed %v, want the request older than the drain only", closed)
	}
	old.end()
	d.tick(at(timeout+2*time.Second), timeout)
	if !closed["late"] || closed["other"] {
		t.Fatalf("closed %v, want the late request too, drain_timeout after it began, and never the ready backend's", closed)
	}
	if got := statsOf(b1).cut.Load(); got != 2 {
		t.Errorf("b1 counts %d closed, want 2", got)
	}
	lines := entries(logs, "closed connections that outlived drain_timeout")
	if len(lines) != 2 || lines[0].ContextMap()["closed"] != int64(1) || lines[0].ContextMap()["state"] != "drain" {
		t.Errorf("logged %v, want a line per tick that closed one request of drain", lines)
	}

	// A request goes on past the timeout once it is off, or once its
	// backend is ready again.
	clear(closed)
	late.seq.Add(1) // the next request on the same connection
	d.tick(at(time.Hour), 0)
	mustSetState := func(st config.State) {
		if _, err := p.setState("b1", st, "test"); err != nil {
			t.Fatal(err)
		}
	}
	mustSetState(config.StateReady)
	d.tick(time.Now().Add(time.Hour), timeout)
	if len(closed) != 0 {
		t.Errorf("closed %v with drain_timeout 0, or with b1 ready", closed)
	}
	if err := s.Shutdown(t.Context()); err != nil {
		t.Error(err)
	}
}

// streamBackend sends an event, then holds the response open until the
// client goes away.
func streamBackend(t *testing.T, id string) *url.URL {
	t.Helper()
	return testutil.StartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set(testutil.IDHeader, id)
		_, _ = io.WriteString(w, "data: hello\n\n")
		_ = http.NewResponseController(w).Flush()
		<-r.Context().Done()
	}))
}

// openStream starts an event stream through the proxy and reads its first
// event; the body is left open until close is called or the test ends.
func openStream(t *testing.T, target string) (br *bufio.Reader, close func()) {
	t.Helper()
	resp, err := testutil.Client(t).Get(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	br = bufio.NewReader(resp.Body)
	if line, err := br.ReadString('\n'); err != nil || line != "data: hello\n" {
		t.Fatalf("first event %q, %v", line, err)
	}
	return br, func() { resp.Body.Close() }
}

// backendOf returns pool/backend from /api/v1/pools at admin, or false.
func backendOf(t *testing.T, admin, pool, backend string) (backendStatus, bool) {
	t.Helper()
	code, body := fetch(t, testutil.Client(t), admin+"/api/v1/pools")
	if code != http.StatusOK {
		t.Fatalf("GET /api/v1/pools: %d %s", code, body)
	}
	var doc struct{ Pools []poolStatus }
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatal(err)
	}
	for _, ps := range doc.Pools {
		for _, bs := range append(ps.Backends, ps.Removed...) {
			if ps.Name == pool && bs.Name == backend {
				return bs, true
			}
		}
	}
	return backendStatus{}, false
}

// TestLongConnections: upgraded connections and streams count as in
// flight and are shown per backend; a backend a reload removes stays
// visible while they last; drain_timeout closes those that outlive it, on a
// draining backend and on a removed one.
func TestLongConnections(t *testing.T) {
	wsURL, sseURL, sse2URL := echoBackend(t), streamBackend(t, "sse"), streamBackend(t, "sse-2")
	cfgWith := func(stream string, u *url.URL, drainTimeout time.Duration) *config.Config {
		return &config.Config{Listen: "127.0.0.1:0", Timeouts: testTimeouts, DrainTimeout: drainTimeout,
			Routes: []config.Route{{Match: config.Match{Path: "/ws"}, Pool: "ws"}, {Pool: "events"}},
			Pools: []*config.Pool{
				{Name: "ws", Balancer: config.Balancer{Type: "round-robin"}, Backends: []config.Backend{{URL: wsURL, Name: "ws-1"}}},
				{Name: "events", Balancer: config.Balancer{Type: "round-robin"}, Backends: []config.Backend{{URL: u, Name: stream}}},
			}}
	}
	log, logs := observed()
	s, proxyURL, admin := startWithAdmin(t, cfgWith("sse", sseURL, 0), log)
	c := testutil.Client(t)
	want := func(pool, backend string, check func(backendStatus) bool) {
		t.Helper()
		var last any = "absent"
		testutil.Eventually(t, waitFor, fmt.Sprintf("%s/%s as expected; last seen %+v", pool, backend, &last), func() bool {
			bs, ok := backendOf(t, admin, pool, backend)
			if ok {
				last = bs
			}
			return ok && check(bs)
		})
	}
	gone := func(pool, backend string) {
		t.Helper()
		testutil.Eventually(t, waitFor, pool+"/"+backend+" gone", func() bool {
			_, ok := backendOf(t, admin, pool, backend)
			return !ok
		})
	}

	conn, br := openTunnel(t, proxyURL.Host)
	stream, closeStream := openStream(t, proxyURL.String()+"/events")
	want("ws", "ws-1", func(bs backendStatus) bool { return bs.InFlight == 1 && bs.Upgraded == 1 && bs.Streams == 0 })
	want("events", "sse", func(bs backendStatus) bool { return bs.InFlight == 1 && bs.Streams == 1 && bs.Upgraded == 0 })

	// Removed by a reload, with no drain_timeout: shown while its stream
	// lasts, and gone after.
	reload(t, s, cfgWith("sse-2", sse2URL, 0))
	want("events", "sse", func(bs backendStatus) bool {
		return bs.State == "removed" && bs.Health == "unchecked" && bs.InFlight == 1 && bs.Streams == 1 && !bs.Available
	})
	fams := scrape(t, c, admin)
	for _, m := range []struct{ name, labels string }{
		{"affinity_backend_state", "pool=events,backend=sse,state=removed"},
		{"affinity_backend_streams", "pool=events,backend=sse"},
		{"affinity_backend_in_flight", "pool=events,backend=sse"},
		{"affinity_backend_state", "pool=events,backend=sse-2,state=ready"},
		{"affinity_backend_upgraded", "pool=ws,backend=ws-1"},
	} {
		if v, ok := metricValue(fams, m.name, m.labels); !ok || v != 1 {
			t.Errorf("%s{%s} = %v (found %v), want 1", m.name, m.labels, v, ok)
		}
	}
	if _, err := io.WriteString(conn, "still there\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := br.ReadString('\n'); err != nil || line != "still there\n" {
		t.Fatalf("tunnel echo %q, %v", line, err)
	}
	closeStream()
	gone("events", "sse")

	// With a drain_timeout: a stream of a backend a reload removes, and a
	// tunnel of a backend set to drain, are closed once they outlive it.
	reload(t, s, cfgWith("sse-2", sse2URL, 200*time.Millisecond))
	stream, _ = openStream(t, proxyURL.String()+"/events")
	reload(t, s, cfgWith("sse", sseURL, 200*time.Millisecond))
	if _, err := io.Copy(io.Discard, stream); err == nil {
		t.Error("the stream of a removed backend ended as if complete, want it cut off")
	}
	gone("events", "sse-2")
	mustSetState(t, admin, "ws", "ws-1", config.StateDrain)
	if _, err := br.ReadString('\n'); err == nil {
		t.Error("the tunnel of a draining backend was not closed")
	}
	want("ws", "ws-1", func(bs backendStatus) bool {
		return bs.State == "drain" && bs.InFlight == 0 && bs.Upgraded == 0 && bs.DrainClosed == 1
	})
	// The drainer logs what a tick closed once its walk is done, after
	// the closes and their counts.
	testutil.Eventually(t, waitFor, "a log of sse-2's stream closed as removed, and one of ws-1's tunnel closed as draining", func() bool {
		closedLines := map[string]bool{}
		for _, e := range entries(logs, "closed connections that outlived drain_timeout") {
			f := e.ContextMap()
			closedLines[fmt.Sprint(f["pool"], "/", f["backend"], " ", f["state"], " closed ", f["closed"],
				" upgraded ", f["upgraded"], " streams ", f["streams"])] = true
		}
		return closedLines["events/sse-2 removed closed 1 upgraded 0 streams 1"] && closedLines["ws/ws-1 drain closed 1 upgraded 1 streams 0"]
	})
	if v, _ := metricValue(scrape(t, c, admin), "affinity_drain_closed_total", "pool=ws,backend=ws-1"); v != 1 {
		t.Errorf("affinity_drain_closed_total{ws-1} = %v, want 1", v)
	}
}

// TestDrainProgress: what an operator waiting for a drain reads, per
// backend: requests in flight, how long it has been idle, and the sessions
// the learn balancer still pins to it.
func TestDrainProgress(t *testing.T) {
	slow, started, release := blockingBackend(t)
	backends := append(startSessionApps(t, "b0", "b1"), config.Backend{URL: slow, Name: "slow", Weight: 1})
	pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "learn", Options: learnOptions()},
		Backends: backends[:2], Retries: config.DefaultRetries()}
	slowPool := &config.Pool{Name: "slow", Balancer: config.Balancer{Type: "round-robin"}, Backends: backends[2:]}
	cfg := catchAll(pc)
	cfg.Pools = append(cfg.Pools, slowPool)
	cfg.Routes = []config.Route{{Match: config.Match{Path: "/slow"}, Pool: "slow"}, {Pool: "web"}}
	_, proxyURL, admin := startWithAdmin(t, cfg, nil)
	c := testutil.Client(t)

	if bs, _ := backendOf(t, admin, "slow", "slow"); bs.IdleSeconds == nil || !bs.Unused || bs.Sessions != nil {
		t.Errorf("before any request: idle %v, unused %v, sessions %v; want idle since start, no sessions",
			bs.IdleSeconds, bs.Unused, bs.Sessions)
	}
	sessions := map[string]int{}
	for range 12 {
		backend, sid := sessionGet(t, jarClient(t), proxyURL.String()+"/", "")
		if sid == "" {
			t.Fatal("the app set no session")
		}
		sessions[backend]++
	}
	// Counts are kept for a second.
	testutil.Eventually(t, waitFor, "the sessions counted", func() bool {
		bs, _ := backendOf(t, admin, "web", "b0")
		return bs.Sessions != nil && *bs.Sessions == sessions["b0"]
	})
	bs := mustSetState(t, admin, "web", "b0", config.StateDrain)
	if bs.Sessions == nil || *bs.Sessions != sessions["b0"] || bs.IdleSeconds == nil || bs.InFlight != 0 {
		t.Errorf("draining b0: sessions %v, idle %v, in flight %d; want %d sessions, idle, none in flight",
			bs.Sessions, bs.IdleSeconds, bs.InFlight, sessions["b0"])
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		if resp, err := c.Get(proxyURL.String() + "/slow"); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	<-started
	if bs, _ := backendOf(t, admin, "slow", "slow"); bs.InFlight != 1 || bs.IdleSeconds == nil || *bs.IdleSeconds != 0 {
		t.Errorf("with a request in flight: %d in flight, idle %v; want 1 and 0", bs.InFlight, bs.IdleSeconds)
	}
	release()
	<-done
	testutil.Eventually(t, waitFor, "the slow backend idle", func() bool {
		bs, _ := backendOf(t, admin, "slow", "slow")
		return bs.InFlight == 0 && bs.IdleSeconds != nil && *bs.IdleSeconds > 0 && !bs.Unused
	})
	fams := scrape(t, c, admin)
	if v, ok := metricValue(fams, "affinity_learn_sessions", "pool=web,backend=b0"); !ok || int(v) != sessions["b0"] {
		t.Errorf("affinity_learn_sessions{b0} = %v (%v), want %d", v, ok, sessions["b0"])
	}
	if v, ok := metricValue(fams, "affinity_backend_state", "pool=web,backend=b0,state=drain"); !ok || v != 1 {
		t.Errorf("affinity_backend_state{b0,drain} = %v (%v), want 1", v, ok)
	}
	if v, ok := metricValue(fams, "affinity_backend_state", "pool=web,backend=b0,state=ready"); !ok || v != 0 {
		t.Errorf("affinity_backend_state{b0,ready} = %v (%v), want 0", v, ok)
	}
	if v, ok := metricValue(fams, "affinity_backend_last_request_timestamp_seconds", "pool=slow,backend=slow"); !ok ||
		time.Since(time.UnixMilli(int64(v*1000))) > time.Minute {
		t.Errorf("affinity_backend_last_request_timestamp_seconds{slow} = %v (%v), want about now", v, ok)
	}
}

// TestDrainTimeoutHTTP2: an HTTP/2 stream of a draining backend is reset
// at drain_timeout, and the other streams of its connection go on.
func TestDrainTimeoutHTTP2(t *testing.T) {
	cert := newTestCert(t)
	cfg := &config.Config{Listen: "127.0.0.1:0", Timeouts: testTimeouts, DrainTimeout: 200 * time.Millisecond,
		TLS:    &config.TLS{Cert: cert.certFile, Key: cert.keyFile},
		Routes: []config.Route{{Match: config.Match{Path: "/events"}, Pool: "events"}, {Pool: "web"}},
		Pools: []*config.Pool{
			{Name: "events", Balancer: config.Balancer{Type: "round-robin"},
				Backends: []config.Backend{{URL: streamBackend(t, "sse"), Name: "sse"}}},
			poolOf("web", "round-robin", balancer.Options{}, startBackends(t, "w1")...),
		}}
	_, proxyURL, admin := startWithAdmin(t, cfg, nil)
	tr := &http.Transport{ForceAttemptHTTP2: true, TLSClientConfig: &tls.Config{RootCAs: cert.roots}}
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr}
	base := "https://" + proxyURL.Host

	// Bounded, so that a stream never reset fails the test instead of
	// hanging it.
	ctx, cancel := context.WithTimeout(t.Context(), waitFor)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("stream over %s, want HTTP/2", resp.Proto)
	}
	br := bufio.NewReader(resp.Body)
	if line, err := br.ReadString('\n'); err != nil || line != "data: hello\n" {
		t.Fatalf("first event %q, %v", line, err)
	}
	mustSetState(t, admin, "events", "sse", config.StateDrain)
	if _, err := io.Copy(io.Discard, br); err == nil || ctx.Err() != nil {
		t.Errorf("the stream of a draining backend ended with %v, want it reset before %v", err, waitFor)
	}
	// The same connection serves on.
	if r := get(t, c, base+"/", nil); r.status != http.StatusOK || r.body != "w1" {
		t.Errorf("after the reset: %d %q, want 200 from w1", r.status, r.body)
	}
	if bs, _ := backendOf(t, admin, "events", "sse"); bs.DrainClosed != 1 {
		t.Errorf("drain_closed %d, want 1", bs.DrainClosed)
	}
}
