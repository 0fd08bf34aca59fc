package experiment

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/harness"
)

// fakeShop implements the demo app's shop contract in memory, for testing
// the load generator without processes. forget makes it lose every session.
type fakeShop struct {
	name     string
	mu       sync.Mutex
	sessions map[string]*fakeSession
	next     int
	// block, when not nil, holds every request until it is closed.
	block   chan struct{}
	arrived atomic.Int64
}

type fakeSession struct {
	user  string
	items int
}

func newFakeShop(name string) *fakeShop {
	return &fakeShop{name: name, sessions: map[string]*fakeSession{}}
}

func (s *fakeShop) forget() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sessions = map[string]*fakeSession{}
}

func (s *fakeShop) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.arrived.Add(1)
	if s.block != nil {
		<-s.block
	}
	w.Header().Set(headerBackend, s.name)
	w.Header().Set(headerStoreOps, "1")
	w.Header().Set("Content-Type", "application/json")
	fail := func(status int, code string) {
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": code})
	}
	user := r.Header.Get(headerUser)
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.URL.Path == pathLogout {
		if c, err := r.Cookie("SHOP_SESSION"); err == nil {
			delete(s.sessions, c.Value)
		}
		http.SetCookie(w, &http.Cookie{Name: "SHOP_SESSION", MaxAge: -1})
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if r.URL.Path == pathLogin {
		s.next++
		id := strconv.Itoa(s.next)
		s.sessions[id] = &fakeSession{user: user}
		http.SetCookie(w, &http.Cookie{Name: "SHOP_SESSION", Value: id})
		_, _ = fmt.Fprintf(w, `{"user":%q}`, user)
		return
	}
	c, err := r.Cookie("SHOP_SESSION")
	if err != nil || s.sessions[c.Value] == nil || s.sessions[c.Value].user != user {
		fail(http.StatusConflict, kindSessionLost)
		return
	}
	sess := s.sessions[c.Value]
	if step, _ := strconv.Atoi(r.Header.Get(headerStep)); step != sess.items {
		fail(http.StatusConflict, kindSessionStale)
		return
	}
	switch r.URL.Path {
	case pathItems:
		sess.items++
		_, _ = fmt.Fprintf(w, `{"items":%d}`, sess.items)
	case pathCart:
		_, _ = fmt.Fprint(w, `{"items":[]}`)
	case pathCheckout:
		sess.items = 0
		_, _ = fmt.Fprint(w, `{"order":"x"}`)
	default:
		fail(http.StatusNotFound, "not_found")
	}
}

func testLoad() Load {
	return Load{Users: 1, Rate: 100, Duration: time.Second, Seed: 7, MinItems: 2, MaxItems: 2, Timeout: 5 * time.Second}
}

func startShop(t *testing.T, h http.Handler) (*httptest.Server, http.RoundTripper) {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	tr := harness.NewTransport(4)
	t.Cleanup(tr.CloseIdleConnections)
	return srv, tr
}

// testGenerator returns a generator of l against the shop at base.
func testGenerator(t *testing.T, l Load, base string, tr http.RoundTripper) *generator {
	t.Helper()
	g, err := newGenerator(l, base, tr)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestWorkflowFollowsTheShop(t *testing.T) {
	shop := newFakeShop("b1")
	srv, client := startShop(t, shop)
	g := testGenerator(t, testLoad(), srv.URL, client)
	u := g.users[0]
	c := harness.WallClock{}
	var got []string
	for range 6 {
		s := g.do(context.Background(), c, u, 0, c.Now())
		got = append(got, fmt.Sprintf("%s/%d/%s", s.Step, s.Items, s.Kind))
		if s.Backend != "b1" || s.StoreOps != 1 || s.Status != http.StatusOK {
			t.Errorf("sample %+v: want backend b1, 1 store op, 200", s)
		}
	}
	want := []string{"login/0/", "add/0/", "add/1/", "cart/2/", "checkout/2/", "login/0/"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("workflow = %v, want %v", got, want)
	}
	if u.id != "u0001" {
		t.Errorf("user id %q, want u0001", u.id)
	}
}

func TestWorkflowStartsOverOnLostSession(t *testing.T) {
	shop := newFakeShop("b1")
	srv, client := startShop(t, shop)
	g := testGenerator(t, testLoad(), srv.URL, client)
	u := g.users[0]
	c := harness.WallClock{}
	ctx := context.Background()
	g.do(ctx, c, u, 0, c.Now()) // login
	g.do(ctx, c, u, 0, c.Now()) // one item
	shop.forget()
	s := g.do(ctx, c, u, 0, c.Now())
	if s.Kind != kindSessionLost || s.Status != http.StatusConflict || !s.lostSession() {
		t.Fatalf("after the shop forgot: %+v, want a 409 session_lost", s)
	}
	if s = g.do(ctx, c, u, 0, c.Now()); s.Step != stepLogin || !s.OK() {
		t.Errorf("next request %+v, want a successful login", s)
	}
	if s = g.do(ctx, c, u, 0, c.Now()); s.Step != stepAdd || s.Items != 0 || !s.OK() {
		t.Errorf("then %+v, want the first item of a new cart", s)
	}
}

func TestWorkflowRetriesTheStepAfterOtherErrors(t *testing.T) {
	var fail atomic.Bool
	shop := newFakeShop("b1")
	srv, client := startShop(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fail.Load() {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		shop.ServeHTTP(w, r)
	}))
	g := testGenerator(t, testLoad(), srv.URL, client)
	u, c, ctx := g.users[0], harness.WallClock{}, context.Background()
	g.do(ctx, c, u, 0, c.Now()) // login
	fail.Store(true)
	s := g.do(ctx, c, u, 0, c.Now())
	if s.Kind != "http_502" || s.Backend != "" {
		t.Fatalf("proxy error sample %+v, want kind http_502 and no backend", s)
	}
	fail.Store(false)
	if s = g.do(ctx, c, u, 0, c.Now()); s.Step != stepAdd || s.Items != 0 || !s.OK() {
		t.Errorf("after the error: %+v, want the same step (first item) again, successful", s)
	}
}

func TestChurnReplacesTheUser(t *testing.T) {
	shop := newFakeShop("b1")
	srv, client := startShop(t, shop)
	l := testLoad()
	l.Churn = 1
	g := testGenerator(t, l, srv.URL, client)
	u, c, ctx := g.users[0], harness.WallClock{}, context.Background()
	for range 5 { // login, 2 items, cart, checkout
		g.do(ctx, c, u, 0, c.Now())
	}
	if cookies := harness.CookieHeader(u.client.Jar, g.base); u.id != "u0001.1" || cookies != "" || u.next != stepLogin {
		t.Errorf("after checkout with churn 1: id %q, cookies %q, next %v; want u0001.1, none, login", u.id, cookies, u.next)
	}
}

func TestUsersAreTheSameForTheSameSeed(t *testing.T) {
	l := testLoad()
	l.MinItems, l.MaxItems = 1, 50
	targets := func() []int {
		var out []int
		for i := range 5 {
			u := newUser(l.Seed, i, nil)
			out = append(out, l.MinItems+u.rng.IntN(l.MaxItems-l.MinItems+1))
		}
		return out
	}
	a, b := targets(), targets()
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Errorf("same seed gave cart sizes %v then %v", a, b)
	}
	l.Seed++
	if c := targets(); fmt.Sprint(a) == fmt.Sprint(c) {
		t.Errorf("another seed gave the same cart sizes %v", c)
	}
}

func TestRunRecordsEveryArrival(t *testing.T) {
	srv, client := startShop(t, newFakeShop("b1"))
	l := testLoad()
	l.Users, l.Rate, l.Duration = 4, 400, 100*time.Millisecond
	g := testGenerator(t, l, srv.URL, client)
	g.run(context.Background(), harness.WallClock{}, time.Now())
	if got := len(g.rec.samples) + g.skipped; got != 40 {
		t.Errorf("samples + skipped = %d, want 40 arrivals", got)
	}
	for _, s := range g.rec.samples {
		if s.Latency <= 0 || s.ReqBytes <= 0 || s.RespBytes <= 0 {
			t.Fatalf("sample %+v: want latency and sizes", s)
		}
	}
}

// TestLogoutThenReplay plays a workflow with logouts: after the checkout
// the user logs out, then replays the cookie it held, which the shop (which
// deleted the session) refuses; the user logs in again.
func TestLogoutThenReplay(t *testing.T) {
	var replayed atomic.Value
	shop := newFakeShop("b1")
	srv, tr := startShop(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == pathCart {
			replayed.Store(r.Header.Get("Cookie"))
		}
		shop.ServeHTTP(w, r)
	}))
	l := testLoad()
	l.Logout, l.Replay = true, true
	g := testGenerator(t, l, srv.URL, tr)
	u, c, ctx := g.users[0], harness.WallClock{}, context.Background()
	var got []Sample
	for range 8 { // login, 2 items, cart, checkout, logout, replay, login
		got = append(got, g.do(ctx, c, u, 0, c.Now()))
	}
	var steps []string
	for _, s := range got {
		steps = append(steps, fmt.Sprintf("%s/%d", s.Step, s.Status))
	}
	want := "[login/200 add/200 add/200 cart/200 checkout/200 logout/204 replay/409 login/200]"
	if fmt.Sprint(steps) != want {
		t.Fatalf("steps %v, want %s", steps, want)
	}
	if cookie := replayed.Load().(string); !strings.HasPrefix(cookie, "SHOP_SESSION=") || got[6].CookieBytes != len(cookie) {
		t.Errorf("the replay sent %q (%d bytes counted), want the session cookie held before the logout", cookie, got[6].CookieBytes)
	}
	r := summarize("cookie", StoreMemory, got, 0, time.Second, []string{"b1"}, 1, nil)
	if r.Replays != 1 || r.ReplaysAccepted == nil || *r.ReplaysAccepted != 0 || r.Errors != 0 || r.SessionsLostPct != 0 {
		t.Errorf("replays %d, accepted %v, errors %d, lost %.0f%%: want 1 refused replay, no error, no lost session",
			r.Replays, r.ReplaysAccepted, r.Errors, r.SessionsLostPct)
	}
	if r.Timeline[0].Errors != 0 || r.Timeline[0].Lost != 0 {
		t.Errorf("timeline %+v: a refused replay is neither an error nor a lost session", r.Timeline[0])
	}
}

// TestLogoutThenNewUser: without Replay, a user who logged out is replaced
// (Churn 1) by a new one, who logs in with no cookie.
func TestLogoutThenNewUser(t *testing.T) {
	var cookies []string
	shop := newFakeShop("b1")
	srv, tr := startShop(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == pathLogin {
			cookies = append(cookies, r.Header.Get(headerUser)+":"+r.Header.Get("Cookie"))
		}
		shop.ServeHTTP(w, r)
	}))
	l := testLoad()
	l.Logout, l.Churn = true, 1
	g := testGenerator(t, l, srv.URL, tr)
	u, c, ctx := g.users[0], harness.WallClock{}, context.Background()
	var steps []string
	for range 7 {
		s := g.do(ctx, c, u, 0, c.Now())
		steps = append(steps, fmt.Sprintf("%s/%d", s.Step, s.Status))
	}
	if want := "[login/200 add/200 add/200 cart/200 checkout/200 logout/204 login/200]"; fmt.Sprint(steps) != want {
		t.Fatalf("steps %v, want %s", steps, want)
	}
	if fmt.Sprint(cookies) != "[u0001: u0001.1:]" {
		t.Errorf("logins (user:cookie) %q, want u0001 then a new user, u0001.1, both without cookies", cookies)
	}
}

// TestCheckoutClients: a client with keys sends one Idempotency-Key per
// cart and repeats a failed checkout with it; one without keys sends none
// and starts over with a new cart instead; the default repeats it as it
// was. Checkouts count each cart once, and a cart no checkout ordered as
// failed.
func TestCheckoutClients(t *testing.T) {
	for _, tt := range []struct {
		client string
		steps  string
		keys   string
		failed int
	}{
		{clientKey, "[checkout/503 checkout/200 login/200]", "[u0001.0 u0001.0]", 0},
		{clientNoKey, "[checkout/503 login/200 add/200]", "[]", 1},
		{"", "[checkout/503 checkout/200 login/200]", "[ ]", 0},
	} {
		t.Run("client="+tt.client, func(t *testing.T) {
			var keys []string
			failNext := true
			shop := newFakeShop("b1")
			srv, tr := startShop(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == pathCheckout {
					keys = append(keys, r.Header.Get(headerIdempotencyKey))
					if failNext {
						failNext = false
						w.WriteHeader(http.StatusServiceUnavailable)
						return
					}
				}
				shop.ServeHTTP(w, r)
			}))
			l := testLoad()
			l.Client = tt.client
			g := testGenerator(t, l, srv.URL, tr)
			u, c, ctx := g.users[0], harness.WallClock{}, context.Background()
			var got []Sample
			for range 7 { // login, 2 items, cart, then the three steps checked
				got = append(got, g.do(ctx, c, u, 0, c.Now()))
			}
			var steps []string
			for _, s := range got[4:] {
				steps = append(steps, fmt.Sprintf("%s/%d", s.Step, s.Status))
			}
			if fmt.Sprint(steps) != tt.steps || fmt.Sprint(keys) != tt.keys {
				t.Errorf("steps %v, keys %q; want %s, %s", steps, keys, tt.steps, tt.keys)
			}
			if carts, failed, _ := checkouts(got); carts != 1 || failed != tt.failed {
				t.Errorf("%d checkouts, %d failed; want 1 and %d", carts, failed, tt.failed)
			}
			if last := got[len(got)-1]; last.Cart != 1 {
				t.Errorf("the step after the checkout is of cart %d, want the next, 1", last.Cart)
			}
		})
	}
}
