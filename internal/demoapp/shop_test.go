package demoapp

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestShopWorkflow(t *testing.T) {
	// Round trips per operation when every request reaches the backend
	// that logged the user in.
	type ops struct{ login, add, cart, checkout int }
	tests := []struct {
		kind   string
		cookie string
		ops    ops
		cache  string // X-Cache of the requests after login
	}{
		{"memory", SessionCookie, ops{}, ""},
		// Load and save are a round trip each; a checkout places its
		// order in Redis too.
		{"redis", SessionCookie, ops{login: 1, add: 2, cart: 1, checkout: 3}, ""},
		// A version check replaces the load, and hits.
		{"cached-redis", SessionCookie, ops{login: 1, add: 2, cart: 1, checkout: 3}, "hit"},
		{"token", TokenCookie, ops{}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.kind, func(t *testing.T) {
			b := newFixture(t, tc.kind).start(t, "web-1")
			s := newShopper(t, "alice")
			wantCost := func(what string, r shopReply, ops int, cache string) {
				t.Helper()
				if r.backend != "web-1" || r.ops != ops || r.cache != cache {
					t.Errorf("%s: backend %q, %d store ops, cache %q; want web-1, %d, %q",
						what, r.backend, r.ops, r.cache, ops, cache)
				}
			}

			r := s.login(b.url)
			r.want(t, "login", http.StatusOK, "")
			if r.body != `{"user":"alice","backend":"web-1"}`+"\n" {
				t.Errorf("login body %q", r.body)
			}
			wantCost("login", r, tc.ops.login, "")
			if s.handle == nil || s.handle.Name != tc.cookie || !s.handle.HttpOnly || s.handle.Path != "/" {
				t.Fatalf("login set cookie %v, want %s, HttpOnly, Path=/", s.handle, tc.cookie)
			}
			first := s.handle.Value

			for k := range 3 {
				r := s.add(b.url, k, fmt.Sprintf("sku-%d", k))
				r.want(t, fmt.Sprintf("add #%d", k+1), http.StatusOK, fmt.Sprint(k+1))
				wantCost("add", r, tc.ops.add, tc.cache)
			}
			// A token is the session: it grows with the cart.
			if tc.kind == "token" && len(s.handle.Value) <= len(first) {
				t.Errorf("token of 3 items is %d bytes, the empty one %d: want it larger", len(s.handle.Value), len(first))
			}
			if tc.kind != "token" && s.handle.Value != first {
				t.Errorf("session id changed from %q to %q", first, s.handle.Value)
			}

			r = s.cart(b.url, 3)
			r.want(t, "cart", http.StatusOK, `["sku-0","sku-1","sku-2"]`)
			wantCost("cart", r, tc.ops.cart, tc.cache)

			r = s.checkout(b.url, 3, "")
			r.want(t, "checkout", http.StatusOK, "3")
			if r.Order == "" {
				t.Errorf("checkout body %q: no order id", r.body)
			}
			wantCost("checkout", r, tc.ops.checkout, tc.cache)

			// The session outlives the checkout, its cart emptied.
			s.cart(b.url, 0).want(t, "cart after checkout", http.StatusOK, "[]")
			s.add(b.url, 0, "sku-9").want(t, "add after checkout", http.StatusOK, "1")
			if again := s.checkout(b.url, 1, ""); again.Order == r.Order || again.Order == "" {
				t.Errorf("second order %q, first %q: want a new id", again.Order, r.Order)
			}
		})
	}
}

func TestSessionLost(t *testing.T) {
	type request func(s *shopper, base string) shopReply
	requests := map[string]request{
		"add":      func(s *shopper, base string) shopReply { return s.add(base, 0, "sku") },
		"cart":     func(s *shopper, base string) shopReply { return s.cart(base, 0) },
		"checkout": func(s *shopper, base string) shopReply { return s.checkout(base, 0, "k") },
	}
	cases := []struct {
		name  string
		setup func(s *shopper, b *backend, cookie string) // leaves s with a handle that is not its own
	}{
		{"no cookie", func(*shopper, *backend, string) {}},
		{"made-up handle", func(s *shopper, _ *backend, cookie string) {
			s.handle = &http.Cookie{Name: cookie, Value: "made-up"}
		}},
		{"well-formed unknown id", func(s *shopper, _ *backend, cookie string) {
			s.handle = &http.Cookie{Name: cookie, Value: newSessionID()}
		}},
		{"another user's session", func(s *shopper, b *backend, _ string) {
			owner := newShopper(s.t, s.user)
			owner.login(b.url).want(s.t, "login", http.StatusOK, "")
			s.handle = owner.handle
			s.user = "not-" + owner.user
		}},
	}
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			b := newFixture(t, kind).start(t, "web-1")
			cookie := b.app.store.Cookie()
			for _, c := range cases {
				for name, req := range requests {
					s := newShopper(t, "alice")
					c.setup(s, b, cookie)
					req(s, b.url).wantError(t, c.name+": "+name, http.StatusConflict, CodeSessionLost)
				}
			}
			// Only the owners' logins created sessions, none of the failures did.
			if held, want := b.app.store.Held(), map[string]int{"memory": 3, "cached-redis": 3}[kind]; held != want {
				t.Errorf("store holds %d sessions, want %d", held, want)
			}
		})
	}
}

func TestSessionStale(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			b := newFixture(t, kind).start(t, "web-1")
			s := newShopper(t, "alice")
			s.login(b.url).want(t, "login", http.StatusOK, "")
			s.add(b.url, 0, "a").want(t, "add", http.StatusOK, "1")
			s.add(b.url, 1, "b").want(t, "add", http.StatusOK, "2")

			s.add(b.url, 1, "c").wantError(t, "add behind", http.StatusConflict, CodeSessionStale)
			s.add(b.url, 3, "c").wantError(t, "add ahead", http.StatusConflict, CodeSessionStale)
			s.cart(b.url, 0).wantError(t, "cart", http.StatusConflict, CodeSessionStale)
			s.checkout(b.url, 1, "").wantError(t, "checkout", http.StatusConflict, CodeSessionStale)
			// Stale requests changed nothing.
			s.cart(b.url, 2).want(t, "cart", http.StatusOK, `["a","b"]`)
		})
	}
}

func TestBadRequests(t *testing.T) {
	b := startApp(t, "web-1", Options{})
	s := newShopper(t, "alice")
	s.login(b.url).want(t, "login", http.StatusOK, "")
	tests := []struct {
		name   string
		method string
		path   string
		header http.Header
		form   string
		status int
		code   string
		allow  string
	}{
		{"login without user", http.MethodPost, "/login", http.Header{HeaderUser: {""}}, "", http.StatusBadRequest, CodeBadRequest, ""},
		{"user too long", http.MethodGet, "/cart", http.Header{HeaderUser: {strings.Repeat("u", 129)}}, "", http.StatusBadRequest, CodeBadRequest, ""},
		{"no step", http.MethodGet, "/cart", http.Header{HeaderStep: {""}}, "", http.StatusBadRequest, CodeBadRequest, ""},
		{"step not a number", http.MethodGet, "/cart", http.Header{HeaderStep: {"two"}}, "", http.StatusBadRequest, CodeBadRequest, ""},
		{"negative step", http.MethodGet, "/cart", http.Header{HeaderStep: {"-1"}}, "", http.StatusBadRequest, CodeBadRequest, ""},
		{"no item", http.MethodPost, "/cart/items", nil, "", http.StatusBadRequest, CodeBadRequest, ""},
		{"item too long", http.MethodPost, "/cart/items", nil, "item=" + strings.Repeat("x", 129), http.StatusBadRequest, CodeBadRequest, ""},
		{"GET /login", http.MethodGet, "/login", nil, "", http.StatusMethodNotAllowed, CodeMethodNotAllowed, "POST"},
		{"GET /cart/items", http.MethodGet, "/cart/items", nil, "", http.StatusMethodNotAllowed, CodeMethodNotAllowed, "POST"},
		{"POST /cart", http.MethodPost, "/cart", nil, "", http.StatusMethodNotAllowed, CodeMethodNotAllowed, "GET"},
		{"GET /checkout", http.MethodGet, "/checkout", nil, "", http.StatusMethodNotAllowed, CodeMethodNotAllowed, "POST"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, b.url+tc.path, strings.NewReader(tc.form))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set(HeaderUser, "alice")
			req.Header.Set(HeaderStep, "0")
			for k, v := range tc.header {
				req.Header[k] = v
			}
			req.AddCookie(s.handle)
			resp, err := s.c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.status || !strings.Contains(string(body), `"error":"`+tc.code+`"`) {
				t.Errorf("%d %s, want %d %s", resp.StatusCode, body, tc.status, tc.code)
			}
			if got := resp.Header.Get("Allow"); got != tc.allow {
				t.Errorf("Allow %q, want %q", got, tc.allow)
			}
			if got := resp.Header.Get(HeaderBackend); got != "web-1" {
				t.Errorf("%s %q, want web-1", HeaderBackend, got)
			}
		})
	}
	// None of them touched the cart.
	s.cart(b.url, 0).want(t, "cart", http.StatusOK, "[]")
}

func TestSessionMovesBetweenBackends(t *testing.T) {
	tests := []struct {
		kind  string
		moves bool
	}{
		{"memory", false},
		{"redis", true},
		{"cached-redis", true},
		{"token", true},
	}
	for _, tc := range tests {
		t.Run(tc.kind, func(t *testing.T) {
			f := newFixture(t, tc.kind)
			a, b := f.start(t, "web-a"), f.start(t, "web-b")
			s := newShopper(t, "alice")
			s.login(a.url).want(t, "login on A", http.StatusOK, "")
			s.add(a.url, 0, "x").want(t, "add on A", http.StatusOK, "1")

			r := s.add(b.url, 1, "y")
			if !tc.moves {
				r.wantError(t, "add on B", http.StatusConflict, CodeSessionLost)
				return
			}
			r.want(t, "add on B", http.StatusOK, "2")
			if r.backend != "web-b" {
				t.Errorf("served by %q, want web-b", r.backend)
			}
			// And back: A must see what B wrote.
			s.cart(a.url, 2).want(t, "cart on A", http.StatusOK, `["x","y"]`)
			s.checkout(b.url, 2, "").want(t, "checkout on B", http.StatusOK, "2")
			s.cart(a.url, 0).want(t, "cart on A", http.StatusOK, "[]")
		})
	}
}

// The near-cache of a backend must never serve a session another backend
// has changed since: without sticky routing, that is the common case.
func TestNearCacheNeverServesStale(t *testing.T) {
	f := newFixture(t, "cached-redis")
	a, b := f.start(t, "web-a"), f.start(t, "web-b")
	s := newShopper(t, "alice")
	steps := []struct {
		what   string
		do     func() shopReply
		status int
		items  string
		ops    int
		cache  string
	}{
		// Login writes through to A's near-cache.
		{"login on A", func() shopReply { return s.login(a.url) }, 200, "", 1, ""},
		{"add on A", func() shopReply { return s.add(a.url, 0, "x") }, 200, "1", 2, "hit"},
		// B has no copy: it loads the session (one read) and keeps it.
		{"cart on B", func() shopReply { return s.cart(b.url, 1) }, 200, `["x"]`, 1, "miss"},
		{"cart on B again", func() shopReply { return s.cart(b.url, 1) }, 200, `["x"]`, 1, "hit"},
		// A changes the cart; B's copy is now old.
		{"add on A", func() shopReply { return s.add(a.url, 1, "y") }, 200, "2", 2, "hit"},
		// B's version check sees it, and B reloads: check plus read.
		{"cart on B after A's change", func() shopReply { return s.cart(b.url, 2) }, 200, `["x","y"]`, 2, "miss"},
		{"cart on B once more", func() shopReply { return s.cart(b.url, 2) }, 200, `["x","y"]`, 1, "hit"},
		// B changes it (and places the order); A's copy is now old.
		{"checkout on B", func() shopReply { return s.checkout(b.url, 2, "") }, 200, "2", 3, "hit"},
		{"cart on A after B's checkout", func() shopReply { return s.cart(a.url, 0) }, 200, "[]", 2, "miss"},
	}
	for _, st := range steps {
		r := st.do()
		r.want(t, st.what, st.status, st.items)
		if r.ops != st.ops || r.cache != st.cache {
			t.Errorf("%s: %d store ops, cache %q; want %d, %q", st.what, r.ops, r.cache, st.ops, st.cache)
		}
	}
	wantMetrics(t, a.url, map[string]float64{
		"demoapp_cache_hits_total":   2,
		"demoapp_cache_misses_total": 1,
		"demoapp_store_loads_total":  1,
		"demoapp_store_ops_total":    1 + 2 + 2 + 2,
		"demoapp_sessions":           1,
	})
	wantMetrics(t, b.url, map[string]float64{
		"demoapp_cache_hits_total":   3,
		"demoapp_cache_misses_total": 2,
		"demoapp_store_loads_total":  2,
		"demoapp_store_ops_total":    1 + 1 + 2 + 1 + 3,
		"demoapp_sessions":           1,
	})
}

func TestCheckoutIdempotency(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			f := newFixture(t, kind)
			a := f.start(t, "web-a")
			s := newShopper(t, "alice")
			s.login(a.url).want(t, "login", http.StatusOK, "")
			s.add(a.url, 0, "x").want(t, "add", http.StatusOK, "1")
			s.add(a.url, 1, "y").want(t, "add", http.StatusOK, "2")

			first := s.checkout(a.url, 2, "key-1")
			first.want(t, "checkout", http.StatusOK, "2")
			if first.replayed {
				t.Error("first checkout marked as replayed")
			}
			// The client did not see the answer and retries.
			retry := s.checkout(a.url, 2, "key-1")
			retry.want(t, "retry", http.StatusOK, "2")
			if retry.Order != first.Order || !retry.replayed {
				t.Errorf("retry: order %q, replayed %v; want %q replayed", retry.Order, retry.replayed, first.Order)
			}
			// Without the key, a retry is judged as a new checkout of a
			// cart that is empty by now.
			s.checkout(a.url, 2, "").wantError(t, "retry without key", http.StatusConflict, CodeSessionStale)
			s.cart(a.url, 0).want(t, "cart", http.StatusOK, "[]")
			wantMetrics(t, a.url, map[string]float64{"demoapp_orders_total": 1})

			// Another key is another checkout.
			if r := s.checkout(a.url, 0, "key-2"); r.status != http.StatusOK || r.Order == first.Order || r.replayed {
				t.Errorf("checkout with a new key: %d order %q replayed %v; want a new order", r.status, r.Order, r.replayed)
			}
		})
	}
}

// Only loads pay the simulated work, and each load pays it once.
func TestWorkPaidPerLoad(t *testing.T) {
	const work = 7 * time.Millisecond
	tests := []struct {
		kind  string
		loads int
	}{
		{"memory", 0},
		{"redis", 4},        // add, add, cart, cart: every request
		{"cached-redis", 1}, // the first request on B
		{"token", 0},
	}
	for _, tc := range tests {
		t.Run(tc.kind, func(t *testing.T) {
			f := newFixture(t, tc.kind)
			var mu sync.Mutex
			var paid []time.Duration
			start := func(name string) *backend {
				b := startApp(t, name, Options{Store: f.store(t), Work: work})
				b.app.pause = func(_ context.Context, d time.Duration) {
					mu.Lock()
					defer mu.Unlock()
					paid = append(paid, d)
				}
				return b
			}
			a, b := start("web-a"), start("web-b")
			s := newShopper(t, "alice")
			s.login(a.url).want(t, "login", http.StatusOK, "")
			s.add(a.url, 0, "x").want(t, "add", http.StatusOK, "1")
			s.add(a.url, 1, "y").want(t, "add", http.StatusOK, "2")
			if tc.kind == "memory" {
				s.cart(a.url, 2).want(t, "cart", http.StatusOK, "")
				s.cart(a.url, 2).want(t, "cart", http.StatusOK, "")
			} else {
				s.cart(b.url, 2).want(t, "cart on B", http.StatusOK, "")
				s.cart(b.url, 2).want(t, "cart on B", http.StatusOK, "")
			}
			mu.Lock()
			defer mu.Unlock()
			want := slices.Repeat([]time.Duration{work}, tc.loads)
			if !slices.Equal(paid, want) {
				t.Errorf("paused %v, want %v", paid, want)
			}
		})
	}
}

func TestSleepEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan struct{})
	go func() {
		sleep(ctx, time.Hour)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("sleep did not return when its context ended")
	}
}
