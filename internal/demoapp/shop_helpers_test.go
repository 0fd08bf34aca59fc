package demoapp

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/testutil"
)

// storeKinds are the stores the shop is tested with, by their CLI names.
var storeKinds = []string{"memory", "redis", "cached-redis", "token"}

// testSecret signs the tokens of every token store of a test, as all the
// backends of an experiment share one.
var testSecret = []byte("test secret")

// fixture is what the backends of one test share: a Redis for the redis
// kinds and the token store's denylist, the token secret for the token
// kinds.
type fixture struct {
	kind  string
	redis *testutil.Redis // nil for memory and token
}

func newFixture(t testing.TB, kind string) *fixture {
	t.Helper()
	f := &fixture{kind: kind}
	if kind == "redis" || kind == "cached-redis" || kind == "token-denylist" {
		f.redis = testutil.StartRedis(t)
	}
	return f
}

// store opens a store of the fixture's kind, closed at the test's end.
func (f *fixture) store(t testing.TB) Store {
	t.Helper()
	var s Store
	switch f.kind {
	case "memory":
		s = NewMemoryStore(0)
	case "redis":
		s = NewRedisStore(f.redis.Addr)
	case "cached-redis":
		s = NewCachedRedisStore(f.redis.Addr, 0)
	case "token":
		ts, err := NewTokenStore(testSecret)
		if err != nil {
			t.Fatal(err)
		}
		s = ts
	case "token-denylist":
		ts, err := NewDenylistTokenStore(testSecret, f.redis.Addr)
		if err != nil {
			t.Fatal(err)
		}
		s = ts
	default:
		t.Fatalf("unknown store kind %q", f.kind)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close %s store: %v", f.kind, err)
		}
	})
	return s
}

// backend is a shop app serving on a loopback port.
type backend struct {
	url string
	app *app
}

// start serves a backend called name with a store of its own on the
// fixture, and its orders where `affinity backend` keeps them: in the
// fixture's Redis when it has one, else in the app.
func (f *fixture) start(t *testing.T, name string) *backend {
	t.Helper()
	return startApp(t, name, f.options(t))
}

// options are a backend's options on the fixture: its store and orders.
func (f *fixture) options(t testing.TB) Options {
	t.Helper()
	o := Options{Store: f.store(t)}
	if f.redis != nil {
		orders := NewRedisOrders(f.redis.Addr)
		t.Cleanup(func() {
			if err := orders.Close(); err != nil {
				t.Errorf("close orders: %v", err)
			}
		})
		o.Orders = orders
	}
	return o
}

func startApp(t *testing.T, name string, o Options) *backend {
	t.Helper()
	a := NewWithOptions(name, o).(*app)
	return &backend{url: start(t, a).URL, app: a}
}

// shopReply is what one shop response tells the client.
type shopReply struct {
	status   int
	backend  string // X-Backend
	ops      int    // X-Store-Ops
	cache    string // X-Cache
	replayed bool   // Idempotent-Replayed
	body     string
	// The body's fields.
	User  string          `json:"user"`
	Items json.RawMessage `json:"items"`
	Order string          `json:"order"`
	Error string          `json:"error"`
}

// shopper is one user of the shop, holding the handle cookie the shop last
// set, as a browser would.
type shopper struct {
	t      *testing.T
	c      *http.Client
	user   string
	handle *http.Cookie
}

func newShopper(t *testing.T, user string) *shopper {
	t.Helper()
	return &shopper{t: t, c: testutil.Client(t), user: user}
}

// login logs in on the backend at base.
func (s *shopper) login(base string) shopReply {
	s.t.Helper()
	return s.send(http.MethodPost, base+"/login", -1, nil, nil)
}

// add adds item to the cart, k items having been added before it.
func (s *shopper) add(base string, k int, item string) shopReply {
	s.t.Helper()
	return s.send(http.MethodPost, base+"/cart/items", k, url.Values{"item": {item}}, nil)
}

func (s *shopper) cart(base string, k int) shopReply {
	s.t.Helper()
	return s.send(http.MethodGet, base+"/cart", k, nil, nil)
}

// checkout checks out k items, with an Idempotency-Key unless key is "".
func (s *shopper) checkout(base string, k int, key string) shopReply {
	s.t.Helper()
	var h http.Header
	if key != "" {
		h = http.Header{HeaderIdempotencyKey: {key}}
	}
	return s.send(http.MethodPost, base+"/checkout", k, nil, h)
}

// send makes a shop request with X-User, X-Step (unless step is -1), the
// handle cookie held, form as the body and the extra headers h, and keeps
// the handle cookie the response sets.
func (s *shopper) send(method, u string, step int, form url.Values, h http.Header) shopReply {
	s.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		s.t.Fatal(err)
	}
	for k, v := range h {
		req.Header[k] = v
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	req.Header.Set(HeaderUser, s.user)
	if step >= 0 {
		req.Header.Set(HeaderStep, strconv.Itoa(step))
	}
	if s.handle != nil {
		req.AddCookie(s.handle)
	}
	resp, err := s.c.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatalf("%s %s: read body: %v", method, u, err)
	}
	r := shopReply{
		status:   resp.StatusCode,
		backend:  resp.Header.Get(HeaderBackend),
		cache:    resp.Header.Get(HeaderCache),
		replayed: resp.Header.Get(HeaderReplayed) == "true",
		body:     string(b),
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		s.t.Fatalf("%s %s: Content-Type %q, want application/json; body %q", method, u, ct, b)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		s.t.Fatalf("%s %s: body %q: %v", method, u, b, err)
	}
	if r.ops, err = strconv.Atoi(resp.Header.Get(HeaderStoreOps)); err != nil {
		s.t.Fatalf("%s %s: %s %q", method, u, HeaderStoreOps, resp.Header.Get(HeaderStoreOps))
	}
	for _, c := range resp.Cookies() {
		if c.Name == SessionCookie || c.Name == TokenCookie {
			s.handle = c
		}
	}
	return r
}

// want fails the test unless r has status and, if items is not empty, that
// JSON items field.
func (r shopReply) want(t *testing.T, what string, status int, items string) {
	t.Helper()
	if r.status != status || (items != "" && string(r.Items) != items) {
		t.Fatalf("%s: %d %s, want %d with items %s", what, r.status, strings.TrimSpace(r.body), status, items)
	}
}

// wantError fails the test unless r is a failure with status and code.
func (r shopReply) wantError(t *testing.T, what string, status int, code string) {
	t.Helper()
	if r.status != status || r.Error != code {
		t.Fatalf("%s: %d %s, want %d %q", what, r.status, strings.TrimSpace(r.body), status, code)
	}
}

// scrape reads the metrics of the backend at base: each sample by its name
// with labels, as written.
func scrape(t *testing.T, base string) map[string]float64 {
	t.Helper()
	resp, err := testutil.Client(t).Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("metrics Content-Type %q, want the Prometheus text format", ct)
	}
	m := make(map[string]float64)
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, " ")
		v, err := strconv.ParseFloat(value, 64)
		if !ok || err != nil {
			t.Fatalf("metrics line %q: want a name and a number", line)
		}
		m[name] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return m
}

// wantMetrics fails the test unless the metrics of the backend at base
// have the values want.
func wantMetrics(t *testing.T, base string, want map[string]float64) {
	t.Helper()
	got := scrape(t, base)
	for name, v := range want {
		if g, ok := got[name]; !ok || g != v {
			t.Errorf("%s: %s = %v (present %v), want %v", base, name, g, ok, v)
		}
	}
}

// eventually polls cond until it holds, failing the test after a while.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, what, cond)
}
