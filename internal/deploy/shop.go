package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/affinityproxy/affinity/internal/demoapp"
	"github.com/affinityproxy/affinity/internal/harness"
)

// sessionCookie is the demo shop's session cookie, which the learn
// balancer learns.
const sessionCookie = demoapp.SessionCookie

// requestTimeout bounds each request of a user: far above what the demo
// app takes, so that only a request that is lost counts as a timeout.
const requestTimeout = 10 * time.Second

// maxFailures bounds the failures a result lists.
const maxFailures = 10

// shop runs the users of a run and keeps what happened to them.
type shop struct {
	r    Run
	base string
	tr   *http.Transport

	mu    sync.Mutex
	users []*user
	// closed holds, per target, the windows in which it took no new
	// user: from its drain's start to its return.
	closed map[string][]window
	// out holds the targets whose deploy began and that are not back:
	// a user whose login lands on one is at risk too. A reload that
	// removes a target takes effect a moment after its deploy began,
	// and a login in flight meanwhile lands there.
	out map[string]bool
}

// window is a span of time; an open one has a zero to.
type window struct{ from, to time.Time }

// user is one visit to the shop: a new browser, logged in on one backend.
type user struct {
	name    string
	began   time.Time // when its login was sent
	backend string    // the backend its login landed on; "" before
	done    bool      // it finished, or stopped on a failure

	requests int
	errors   []string
	lost     bool
	atRisk   bool
}

func newShop(r Run, base string) *shop {
	return &shop{r: r, base: base, tr: harness.NewTransport(r.Users), closed: map[string][]window{}, out: map[string]bool{}}
}

func (s *shop) close() { s.tr.CloseIdleConnections() }

// keepBusy runs one user after the other in slot until ctx ends; the user
// in progress then finishes its visit.
func (s *shop) keepBusy(ctx context.Context, slot int) {
	rng := rand.New(rand.NewPCG(s.r.Seed, uint64(slot)))
	for n := 0; ctx.Err() == nil; n++ {
		u := &user{name: "u" + strconv.Itoa(slot) + "-" + strconv.Itoa(n)}
		s.mu.Lock()
		s.users = append(s.users, u)
		s.mu.Unlock()
		s.visit(u, rng)
	}
}

// visit logs u in, adds items, shows the cart, checks out and logs out,
// with a pause before each request but the first. It stops at the first
// failure.
func (s *shop) visit(u *user, rng *rand.Rand) {
	c := harness.NewClient(s.tr, requestTimeout)
	items := s.r.Items[0] + rng.IntN(s.r.Items[1]-s.r.Items[0]+1)
	type step struct {
		method, path string
		body         url.Values
		step         int // X-Step; -1 for none
		want         int
	}
	steps := []step{{http.MethodPost, "/login", nil, -1, http.StatusOK}}
	for i := range items {
		steps = append(steps, step{http.MethodPost, "/cart/items", url.Values{"item": {"sku-" + strconv.Itoa(i)}}, i, http.StatusOK})
	}
	steps = append(steps,
		step{http.MethodGet, "/cart", nil, items, http.StatusOK},
		step{http.MethodPost, "/checkout", nil, items, http.StatusOK},
		step{http.MethodPost, "/logout", nil, -1, http.StatusNoContent},
	)
	defer func() {
		s.mu.Lock()
		u.done = true
		s.mu.Unlock()
	}()
	for i, st := range steps {
		if i > 0 {
			think := s.r.Think[0] + time.Duration(rng.Int64N(int64(s.r.Think[1]-s.r.Think[0])+1))
			time.Sleep(think)
		}
		if i == 0 {
			s.mu.Lock()
			u.began = time.Now()
			s.mu.Unlock()
		}
		backend, ok := s.send(c, u, st.method, st.path, st.body, st.step, st.want)
		if !ok {
			return
		}
		if i == 0 {
			s.mu.Lock()
			u.backend = backend
			u.atRisk = s.out[backend]
			s.mu.Unlock()
		}
	}
}

// send sends one request of u and records its outcome; it reports the
// backend that answered, and whether the visit can go on.
func (s *shop) send(c *http.Client, u *user, method, path string, body url.Values, step, want int) (string, bool) {
	var rd io.Reader
	if body != nil {
		rd = strings.NewReader(body.Encode())
	}
	req, err := http.NewRequest(method, s.base+path, rd)
	if err != nil {
		panic(err) // the URL is the harness's own
	}
	req.Header.Set(demoapp.HeaderUser, u.name)
	if step >= 0 {
		req.Header.Set(demoapp.HeaderStep, strconv.Itoa(step))
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := c.Do(req)
	s.mu.Lock()
	defer s.mu.Unlock()
	u.requests++
	if err != nil {
		u.errors = append(u.errors, fmt.Sprintf("%s %s %s: %s", u.name, method, path, harness.TransportKind(err)))
		return "", false
	}
	defer func() { _ = resp.Body.Close() }()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	backend := resp.Header.Get(harness.HeaderBackend)
	if resp.StatusCode == want {
		return backend, true
	}
	var reply struct{ Error string }
	_ = json.Unmarshal(data, &reply)
	if resp.StatusCode == http.StatusConflict &&
		(reply.Error == demoapp.CodeSessionLost || reply.Error == demoapp.CodeSessionStale) {
		u.lost = true
		return backend, false
	}
	u.errors = append(u.errors, fmt.Sprintf("%s %s %s: %d %s from %q", u.name, method, path, resp.StatusCode, reply.Error, backend))
	return backend, false
}

// atRisk marks the users whose session is on target now, and who have not
// finished, and those whose login lands there until it is back (reopen).
func (s *shop) atRisk(target string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.out[target] = true
	for _, u := range s.users {
		if !u.done && u.backend == target {
			u.atRisk = true
		}
	}
}

// closeTo records that target took no new user from from on, until
// reopen.
func (s *shop) closeTo(target string, from time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed[target] = append(s.closed[target], window{from: from})
}

// reopen records that target takes new users again from at on.
func (s *shop) reopen(target string, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.out, target)
	if ws := s.closed[target]; len(ws) > 0 && ws[len(ws)-1].to.IsZero() {
		ws[len(ws)-1].to = at
	}
}

// tally adds up what happened to the users.
func (s *shop) tally(res *Result) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, u := range s.users {
		if u.requests == 0 {
			continue
		}
		res.Users++
		res.Requests += u.requests
		res.Errors += len(u.errors)
		if len(res.Failures) < maxFailures {
			res.Failures = append(res.Failures, u.errors[:min(len(u.errors), maxFailures-len(res.Failures))]...)
		}
		if u.lost {
			res.Lost++
		}
		if u.atRisk {
			res.AtRisk++
		}
		for _, w := range s.closed[u.backend] {
			if u.began.After(w.from) && (w.to.IsZero() || u.began.Before(w.to)) {
				res.NewOnTarget++
				break
			}
		}
	}
}
