package experiment

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/affinityproxy/affinity/internal/harness"
)

// Load describes the open-loop traffic of a cell: Rate arrivals per second in
// total, dealt to Users virtual shop users, for Duration.
type Load struct {
	Users    int
	Rate     float64
	Duration time.Duration
	// Seed makes the users: the same seed gives the same user ids and the
	// same cart sizes in every cell.
	Seed uint64
	// MinItems and MaxItems bound the items a user adds per workflow.
	MinItems, MaxItems int
	// Churn is the chance that a user leaves after a checkout and a new
	// user (new id, no cookies) takes its place: the stream of new users
	// that is all a sticky balancer can give a new backend.
	Churn float64
	// Timeout bounds one request, so that a hung backend costs a user a few
	// arrivals, not the run.
	Timeout time.Duration
	// Skew, above 0, makes a few users send most requests (harness.Load).
	Skew float64
	// Logout has a user log out after each checkout (Churn then decides
	// whether a new user takes its place).
	Logout bool
	// Replay has a user who logged out replay the session credential it
	// held, as a thief who copied it would: its next request is a cart
	// with the cookies it had before the logout.
	Replay bool
	// Client is how users check out: "" repeats a failed checkout as it
	// was, without an Idempotency-Key; clientKey sends a key, one per
	// cart, and repeats a failed checkout with it; clientNoKey sends none
	// and, not knowing whether a failed checkout placed the order, does
	// not repeat it: the user starts over with a new cart.
	Client string
}

// step is a request of the shop workflow.
type step uint8

const (
	stepLogin step = iota
	stepAdd
	stepCart
	stepCheckout
	stepLogout
	stepReplay // the cart, asked with the cookies held before the logout
)

var stepNames = [...]string{"login", "add", "cart", "checkout", "logout", "replay"}

// String names the step in reports.
func (s step) String() string { return stepNames[s] }

// Cache outcomes of a sample, from the X-Cache header.
const (
	cacheNone int8 = iota
	cacheHit
	cacheMiss
)

// Sample is one arrival that was sent: what it asked and what came back.
type Sample struct {
	At      time.Duration // scheduled arrival, from the start of the load
	Latency time.Duration // from the scheduled arrival to the end of the response
	User    string
	Step    step
	Cart    int    // the user's cart: how many it had begun before this one
	Items   int    // items in the cart before the request
	Status  int    // HTTP status; 0 when no response came
	Kind    string // empty on success; else the error kind
	Backend string // X-Backend of the response; empty when none

	ReqBytes, RespBytes int // approximate bytes on the wire, headers and body
	CookieBytes         int // length of the Cookie header sent
	StoreOps            int // X-Store-Ops; -1 when absent
	Cache               int8
}

// OK reports whether the request succeeded; for a replay, whether the
// server accepted a credential it should have revoked.
func (s *Sample) OK() bool { return s.Kind == "" }

// failed reports whether the request failed as a user sees it: a replay
// refused is the server doing its job, not a failure.
func (s *Sample) failed() bool { return !s.OK() && s.Step != stepReplay }

// lostSession reports whether the sample is the shop saying the session was
// gone or out of date: the workflow broke.
func (s *Sample) lostSession() bool {
	return s.failed() && (s.Kind == kindSessionLost || s.Kind == kindSessionStale)
}

// user is a virtual user: an identity, its client (with its cookie jar) and
// where it stands in the workflow. The load sends one request of a user at
// a time, so only that request's goroutine touches it.
type user struct {
	slot   int
	gen    int // how many users held this slot before this one
	id     string
	rng    *rand.Rand
	client *http.Client
	next   step
	target int // items to add in this workflow
	added  int
	cart   int    // carts begun before the current one
	stolen string // the Cookie header held when it logged out, for the replay
}

func newUser(seed uint64, slot int, tr http.RoundTripper) *user {
	u := &user{slot: slot, rng: rand.New(rand.NewPCG(seed, uint64(slot)))}
	u.reset(tr)
	return u
}

// reset makes the slot's current identity fresh: a new client with an
// empty cookie jar, at login.
func (u *user) reset(tr http.RoundTripper) {
	u.id = fmt.Sprintf("u%04d", u.slot+1)
	if u.gen > 0 {
		u.id += "." + strconv.Itoa(u.gen)
	}
	u.client = harness.NewClient(tr, 0)
	u.next = stepLogin
}

// recorder collects samples from concurrent requests.
type recorder struct {
	mu      sync.Mutex
	samples []Sample
}

func (r *recorder) add(s Sample) {
	r.mu.Lock()
	r.samples = append(r.samples, s)
	r.mu.Unlock()
}

// generator plays a Load of shop users against one proxy.
type generator struct {
	load  Load
	base  *url.URL // the proxy's
	tr    http.RoundTripper
	bare  *http.Client // without a cookie jar: replays send the stolen cookies alone
	users []*user
	rec   recorder
	// skipped counts arrivals that came while their user's previous request
	// was still in flight.
	skipped int
}

func newGenerator(l Load, base string, tr http.RoundTripper) (*generator, error) {
	u, err := url.Parse(strings.TrimSuffix(base, "/"))
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	g := &generator{load: l, base: u, tr: tr, bare: harness.NewClient(tr, 0)}
	g.bare.Jar = nil
	g.users = make([]*user, l.Users)
	for i := range g.users {
		g.users[i] = newUser(l.Seed, i, tr)
	}
	// Arrivals at the full rate for the whole run, plus slack.
	g.rec.samples = make([]Sample, 0, int(l.Rate*l.Duration.Seconds())+16)
	return g, nil
}

// run plays the load from start until its duration has passed and every
// request it sent has ended, or ctx ends. The arrivals are dealt to the
// users in shuffled rounds (or by Skew), each user one request at a time:
// an arrival whose user still waits for its previous answer is skipped and
// counted (harness.Load).
func (g *generator) run(ctx context.Context, c harness.Clock, start time.Time) {
	l := harness.Load{Users: len(g.users), Rate: g.load.Rate, Duration: g.load.Duration, Seed: g.load.Seed, Skew: g.load.Skew}
	_, g.skipped = l.Run(ctx, c, start, func(ctx context.Context, a harness.Arrival) {
		g.rec.add(g.do(ctx, c, g.users[a.User], a.Due.Sub(start), a.Due))
	})
}

// do sends u's next request, due at "due" (offset "at" from the start of the
// load), and moves u along its workflow by the answer.
func (g *generator) do(ctx context.Context, c harness.Clock, u *user, at time.Duration, due time.Time) Sample {
	s := Sample{At: at, User: u.id, Step: u.next, Cart: u.cart, Items: u.added, StoreOps: -1}
	req, err := g.request(ctx, u)
	if err != nil {
		// Only a malformed base URL fails here, the same for every arrival.
		s.Kind = kindConnection
		return s
	}
	client, cookie := u.client, harness.CookieHeader(u.client.Jar, req.URL)
	switch u.next {
	case stepLogout:
		u.stolen = cookie
	case stepReplay:
		client, cookie = g.bare, u.stolen
	}
	s.CookieBytes = len(cookie)
	s.ReqBytes = requestBytes(req, cookie)
	if u.next == stepReplay && cookie != "" {
		req.Header.Set("Cookie", cookie)
	}
	ctx, cancel := context.WithTimeout(ctx, g.load.Timeout)
	defer cancel()
	resp, err := client.Do(req.WithContext(ctx))
	if err != nil {
		s.Latency = c.Now().Sub(due)
		s.Kind = harness.TransportKind(err)
		return s
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	s.Latency = c.Now().Sub(due)
	s.Status = resp.StatusCode
	s.Backend = resp.Header.Get(headerBackend)
	s.RespBytes = responseBytes(resp, len(body))
	if n, err := strconv.Atoi(resp.Header.Get(headerStoreOps)); err == nil {
		s.StoreOps = n
	}
	switch resp.Header.Get(headerCache) {
	case "hit":
		s.Cache = cacheHit
	case "miss":
		s.Cache = cacheMiss
	}
	switch {
	case err != nil:
		s.Kind = harness.TransportKind(err)
	case resp.StatusCode/100 != 2:
		s.Kind = errorKind(resp.StatusCode, body)
	}
	g.advance(u, &s)
	return s
}

// request builds u's next request.
func (g *generator) request(ctx context.Context, u *user) (*http.Request, error) {
	method, path := http.MethodPost, pathLogin
	switch u.next {
	case stepAdd:
		path = pathItems + "?item=sku-" + strconv.Itoa(u.added+1)
	case stepCart, stepReplay:
		method, path = http.MethodGet, pathCart
	case stepCheckout:
		path = pathCheckout
	case stepLogout:
		path = pathLogout
	}
	req, err := http.NewRequestWithContext(ctx, method, g.base.String()+path, nil)
	if err != nil {
		return nil, fmt.Errorf("request %s %s: %w", method, path, err)
	}
	req.Header.Set("User-Agent", "affinity-experiment")
	req.Header.Set(headerUser, u.id)
	if u.next != stepLogin {
		req.Header.Set(headerStep, strconv.Itoa(u.added))
	}
	if u.next == stepCheckout && g.load.Client == clientKey {
		// One key per cart: a repeat of this checkout is the same one.
		req.Header.Set(headerIdempotencyKey, u.id+"."+strconv.Itoa(u.cart))
	}
	return req, nil
}

// advance moves u to its next step (its client's jar has kept the
// response's cookies): on success the next of the workflow, on a lost
// session back to login (the user starts over, as a real one would), and
// on any other error the same step again, but for a checkout of a client
// without keys (Load.Client), which starts over too. After a replay,
// whatever its answer, the user logs in again.
func (g *generator) advance(u *user, s *Sample) {
	if u.next == stepReplay {
		// Accepted or refused, the replay was the one chance: the user
		// logs in again.
		u.next, u.stolen = stepLogin, ""
		g.churn(u)
		return
	}
	switch {
	case s.lostSession(), !s.OK() && u.next == stepCheckout && g.load.Client == clientNoKey:
		u.startOver()
		return
	case !s.OK():
		return
	}
	switch u.next {
	case stepLogin:
		u.target = g.load.MinItems + u.rng.IntN(g.load.MaxItems-g.load.MinItems+1)
		u.next = stepAdd
	case stepAdd:
		u.added++
		if u.added >= u.target {
			u.next = stepCart
		}
	case stepCart:
		u.next = stepCheckout
	case stepCheckout:
		u.startOver()
		if g.load.Logout {
			u.next = stepLogout
			return
		}
		g.churn(u)
	case stepLogout:
		if g.load.Replay {
			u.next = stepReplay
			return
		}
		u.next = stepLogin
		g.churn(u)
	}
}

// startOver sends u back to login, with a new cart to fill.
func (u *user) startOver() {
	u.next, u.added = stepLogin, 0
	u.cart++
}

// churn replaces u, at the end of its workflow, by a new user (new id, no
// cookies) with the chance Load.Churn.
func (g *generator) churn(u *user) {
	if u.rng.Float64() < g.load.Churn {
		u.gen++
		u.reset(g.tr)
	}
}
