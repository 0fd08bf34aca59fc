package chaos

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/affinityproxy/affinity/internal/harness"
)

// maxBody bounds how much of a response body is read; the demo app's are a
// line long.
const maxBody = 64 << 10

// load is the scenario's open-loop load (harness.Load): Rate requests per
// second dealt to Clients virtual users in turn, each with its own cookie
// jar and a request every Clients/Rate seconds, sent whether or not earlier
// ones were answered, a client's requests overlapping when its backend is
// slow, so that a stalled backend shows as failures and latency instead of
// as fewer requests sent. The clients are placed (pin) before it starts.
type load struct {
	url     string
	sc      Scenario
	clients []*http.Client

	mu       sync.Mutex
	last     []string // per client: the backend of its latest answer
	inFlight []int    // per client: requests sent and not yet answered
}

// newLoad prepares the scenario's clients of url over the shared transport
// tr.
func newLoad(url string, sc Scenario, tr http.RoundTripper) *load {
	l := &load{url: url, sc: sc, clients: make([]*http.Client, sc.Clients), last: make([]string, sc.Clients), inFlight: make([]int, sc.Clients)}
	for i := range l.clients {
		l.clients[i] = harness.NewClient(tr, sc.ClientTimeout)
	}
	return l
}

// pin sends each client's first request, one client after the other, and
// returns once all are answered: the load then starts with every client
// holding its cookie. Otherwise a client whose first answer came later than
// its second request left (Clients/Rate seconds, a stall on a loaded
// machine) sent that one without a cookie, was placed anew, and stayed
// where the last of its answers pinned it: a move the proxy never made.
func (l *load) pin(ctx context.Context) error {
	for c := range l.clients {
		if r := l.do(ctx, time.Now(), c, http.MethodGet); r.fail != "" {
			return fmt.Errorf("client %d not placed: %s", c, r.fail)
		}
	}
	return nil
}

// run sends the load's requests from start and returns their records once
// all are answered or have failed. It stops sending early only when ctx
// ends.
func (l *load) run(ctx context.Context, start time.Time) []record {
	hl := harness.Load{Users: l.sc.Clients, Rate: float64(l.sc.Rate), Duration: l.sc.Duration, Periodic: true, Overlap: true}
	recs := make([]record, hl.Arrivals())
	var mu sync.Mutex
	sent := 0
	hl.Run(ctx, harness.WallClock{}, start, func(ctx context.Context, a harness.Arrival) {
		method := http.MethodGet
		if l.sc.isPost(a.K, a.User) {
			method = http.MethodPost
		}
		r := l.do(ctx, start, a.User, method)
		mu.Lock()
		recs[a.K] = r
		sent = max(sent, a.K+1)
		mu.Unlock()
	})
	return recs[:sent]
}

// do sends one request of client c and tracks it in flight.
func (l *load) do(ctx context.Context, start time.Time, c int, method string) record {
	l.mu.Lock()
	l.inFlight[c]++
	l.mu.Unlock()
	r := send(ctx, l.clients[c], l.url, method, start)
	r.client = c
	l.mu.Lock()
	l.inFlight[c]--
	if r.fail == "" {
		l.last[c] = r.backend
	}
	l.mu.Unlock()
	return r
}

// pinnedTo returns how many clients were last answered by backend, and how
// many requests of theirs are unanswered.
func (l *load) pinnedTo(backend string) (clients, inFlight int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for c, b := range l.last {
		if b == backend {
			clients++
			inFlight += l.inFlight[c]
		}
	}
	return clients, inFlight
}

// send sends one request to url and reads its answer whole. Its record has
// client -1; the caller sets it.
func send(ctx context.Context, c *http.Client, url, method string, start time.Time) record {
	t := time.Now()
	r := record{client: -1, method: method, start: t.Sub(start)}
	var body io.Reader
	if method == http.MethodPost {
		body = strings.NewReader("chaos=1")
	}
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		r.fail = "request"
		return r
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := c.Do(req)
	if err == nil {
		_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
		_ = resp.Body.Close()
	}
	r.latency = time.Since(t)
	switch {
	case err != nil:
		r.fail = harness.TransportKind(err)
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		r.fail = fmt.Sprintf("HTTP %d", resp.StatusCode)
	case resp.Header.Get(harness.HeaderBackend) == "":
		r.fail = "no " + harness.HeaderBackend
	default:
		r.backend = resp.Header.Get(harness.HeaderBackend)
	}
	return r
}

// probe sends a request without cookies every period from now on, as a
// brand-new client would, until backend answers one, ctx ends, or limit
// requests were sent. The load's clients are all pinned by then, so only
// new clients can show that the pool takes the recovered backend again.
func probe(ctx context.Context, tr http.RoundTripper, url, backend string, start time.Time, period time.Duration, limit int) []record {
	c := &http.Client{Transport: tr, Timeout: period * 10}
	tick := time.NewTicker(period)
	defer tick.Stop()
	var recs []record
	for range limit {
		r := send(ctx, c, url, http.MethodGet, start)
		recs = append(recs, r)
		if r.fail == "" && r.backend == backend {
			break
		}
		select {
		case <-ctx.Done():
			return recs
		case <-tick.C:
		}
	}
	return recs
}

// newcomers sends n fresh clients (each with an empty cookie jar) two
// requests each, one client after the other, and returns how many were first
// answered by backend.
func newcomers(ctx context.Context, tr http.RoundTripper, url, backend string, n int, timeout time.Duration) (int, error) {
	on := 0
	for range n {
		c := harness.NewClient(tr, timeout)
		first := ""
		for range 2 {
			r := send(ctx, c, url, http.MethodGet, time.Now())
			if first == "" {
				first = r.backend
			}
		}
		if first == backend {
			on++
		}
	}
	return on, ctx.Err()
}
