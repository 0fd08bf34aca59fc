package experiment

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Load describes the open-loop traffic of a cell: Rate arrivals per second in
// total, dealt to Users virtual users in shuffled rounds, for Duration.
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
}

// step is a request of the shop workflow.
type step uint8

const (
	stepLogin step = iota
	stepAdd
	stepCart
	stepCheckout
)

var stepNames = [...]string{"login", "add", "cart", "checkout"}

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
	Items   int    // items in the cart before the request
	Status  int    // HTTP status; 0 when no response came
	Kind    string // empty on success; else the error kind
	Backend string // X-Backend of the response; empty when none

	ReqBytes, RespBytes int // approximate bytes on the wire, headers and body
	CookieBytes         int // length of the Cookie header sent
	StoreOps            int // X-Store-Ops; -1 when absent
	Cache               int8
}

// OK reports whether the request succeeded.
func (s *Sample) OK() bool { return s.Kind == "" }

// lostSession reports whether the sample is the shop saying the session was
// gone or out of date: the workflow broke.
func (s *Sample) lostSession() bool {
	return s.Kind == kindSessionLost || s.Kind == kindSessionStale
}

// user is a virtual user: an identity, its cookies and where it stands in the
// workflow. Only the goroutine that holds busy touches the other fields; the
// atomic handoff orders those accesses.
type user struct {
	busy atomic.Bool

	slot    int
	gen     int // how many users held this slot before this one
	id      string
	rng     *rand.Rand
	cookies map[string]string
	next    step
	target  int // items to add in this workflow
	added   int
}

func newUser(seed uint64, slot int) *user {
	u := &user{slot: slot, rng: rand.New(rand.NewPCG(seed, uint64(slot)))}
	u.reset()
	return u
}

// reset makes the slot's current identity fresh: no cookies, at login.
func (u *user) reset() {
	u.id = fmt.Sprintf("u%04d", u.slot+1)
	if u.gen > 0 {
		u.id += "." + strconv.Itoa(u.gen)
	}
	u.cookies = map[string]string{}
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

// generator plays a Load against one proxy.
type generator struct {
	load   Load
	base   string // proxy URL, no trailing slash
	client *http.Client
	users  []*user
	rec    recorder
	// skipped counts arrivals that came while their user's previous request
	// was still in flight.
	skipped atomic.Int64
}

func newGenerator(l Load, base string, client *http.Client) *generator {
	g := &generator{load: l, base: strings.TrimSuffix(base, "/"), client: client}
	g.users = make([]*user, l.Users)
	for i := range g.users {
		g.users[i] = newUser(l.Seed, i)
	}
	// Arrivals at the full rate for the whole run, plus slack.
	g.rec.samples = make([]Sample, 0, int(l.Rate*l.Duration.Seconds())+16)
	return g
}

// run plays the load from start until its duration has passed and every
// request it sent has ended, or ctx ends. The arrivals are dealt to the
// users in rounds (see dealer): each user gets one arrival every Users/Rate
// seconds on average. An arrival whose user is still waiting for its
// previous answer is skipped and counted, so a slow server meets no more
// than one request per user instead of a pile-up.
func (g *generator) run(ctx context.Context, c Clock, start time.Time) {
	var wg sync.WaitGroup
	d := dealer{seed: g.load.Seed, n: len(g.users)}
	pace(ctx, c, start, g.load.Rate, g.load.Duration, func(k int, at time.Time) {
		u := g.users[d.user(k)]
		if !u.busy.CompareAndSwap(false, true) {
			g.skipped.Add(1)
			return
		}
		wg.Go(func() {
			defer u.busy.Store(false)
			g.rec.add(g.do(ctx, c, u, at.Sub(start), at))
		})
	})
	wg.Wait()
}

// dealer hands out arrivals to users in rounds: each round of n arrivals
// visits every user once, in an order shuffled afresh for each round from
// the seed. A fixed order would keep the same users in lockstep with a
// round-robin balancer (with n a multiple of the backends, a user would hit
// the same backend every time and never lose a session); a shuffled one
// does not, and the same seed still deals the same way in every cell.
type dealer struct {
	seed  uint64
	n     int
	round int
	perm  []int
}

// user returns the index of the user who gets arrival k. Calls must come
// with k increasing, as pace makes them.
func (d *dealer) user(k int) int {
	if r := k / d.n; d.perm == nil || r != d.round {
		d.round = r
		// The stream id's top bit keeps these streams apart from the
		// users' own, which use ids 0..n-1.
		d.perm = rand.New(rand.NewPCG(d.seed, uint64(r)|1<<63)).Perm(d.n)
	}
	return d.perm[k%d.n]
}

// pace calls arrive for every slot of a fixed-rate schedule that falls in
// [start, start+d): slot k is due at start + k/rate. A slot that is already
// due is sent at once, however late, so that a stall of the generator shows
// as latency (measured from the due time) instead of as fewer requests. pace
// returns the number of slots sent, which is fewer than scheduled only when
// ctx ended.
func pace(ctx context.Context, c Clock, start time.Time, rate float64, d time.Duration, arrive func(k int, at time.Time)) int {
	if rate <= 0 {
		return 0
	}
	interval := float64(time.Second) / rate
	for k := 0; ; k++ {
		off := time.Duration(float64(k) * interval)
		if off >= d {
			return k
		}
		at := start.Add(off)
		if err := c.SleepUntil(ctx, at); err != nil {
			return k
		}
		arrive(k, at)
	}
}

// do sends u's next request, due at "due" (offset "at" from the start of the
// load), and moves u along its workflow by the answer.
func (g *generator) do(ctx context.Context, c Clock, u *user, at time.Duration, due time.Time) Sample {
	s := Sample{At: at, User: u.id, Step: u.next, Items: u.added, StoreOps: -1}
	req, err := g.request(ctx, u)
	if err != nil {
		// Only a malformed base URL fails here, the same for every arrival.
		s.Kind = kindConnection
		return s
	}
	s.CookieBytes = len(req.Header.Get("Cookie"))
	s.ReqBytes = requestBytes(req)
	ctx, cancel := context.WithTimeout(ctx, g.load.Timeout)
	defer cancel()
	resp, err := g.client.Do(req.WithContext(ctx))
	if err != nil {
		s.Latency = c.Now().Sub(due)
		s.Kind = transportKind(err)
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
		s.Kind = transportKind(err)
	case resp.StatusCode/100 != 2:
		s.Kind = errorKind(resp.StatusCode, body)
	}
	g.advance(u, resp, &s)
	return s
}

// request builds u's next request.
func (g *generator) request(ctx context.Context, u *user) (*http.Request, error) {
	method, path := http.MethodPost, pathLogin
	switch u.next {
	case stepAdd:
		path = pathItems + "?item=sku-" + strconv.Itoa(u.added+1)
	case stepCart:
		method, path = http.MethodGet, pathCart
	case stepCheckout:
		path = pathCheckout
	}
	req, err := http.NewRequestWithContext(ctx, method, g.base+path, nil)
	if err != nil {
		return nil, fmt.Errorf("request %s %s: %w", method, path, err)
	}
	req.Header.Set("User-Agent", "affinity-experiment")
	req.Header.Set(headerUser, u.id)
	if u.next != stepLogin {
		req.Header.Set(headerStep, strconv.Itoa(u.added))
	}
	if len(u.cookies) > 0 {
		names := make([]string, 0, len(u.cookies))
		for n := range u.cookies {
			names = append(names, n)
		}
		slices.Sort(names)
		var b strings.Builder
		for i, n := range names {
			if i > 0 {
				b.WriteString("; ")
			}
			b.WriteString(n + "=" + u.cookies[n])
		}
		req.Header.Set("Cookie", b.String())
	}
	return req, nil
}

// advance keeps the cookies of resp and moves u to its next step: on success
// the next of the workflow, on a lost session back to login (the user starts
// over, as a real one would), and on any other error the same step again.
func (g *generator) advance(u *user, resp *http.Response, s *Sample) {
	for _, c := range resp.Cookies() {
		if c.MaxAge < 0 || (!c.Expires.IsZero() && c.Expires.Before(time.Now())) {
			delete(u.cookies, c.Name)
			continue
		}
		u.cookies[c.Name] = c.Value
	}
	switch {
	case s.lostSession():
		u.next, u.added = stepLogin, 0
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
		u.next, u.added = stepLogin, 0
		if u.rng.Float64() < g.load.Churn {
			u.gen++
			u.reset()
		}
	}
}
