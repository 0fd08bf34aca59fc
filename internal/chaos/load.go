package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"strings"
	"sync"
	"time"
)

// backendHeader is the response header in which `affinity backend` names
// itself.
const backendHeader = "X-Backend"

// maxBody bounds how much of a response body is read; the demo app's are a
// line long.
const maxBody = 64 << 10

// load is an open-loop load generator: requests are sent at fixed times,
// whether or not earlier ones were answered, so that a stalled backend shows
// as failures and latency instead of as fewer requests sent.
type load struct {
	url     string
	clients []*http.Client // one per virtual user, each with its own cookie jar

	mu       sync.Mutex
	last     []string // per client: the backend of its latest answer
	inFlight []int    // per client: requests sent and not yet answered
}

// newLoad prepares n virtual users of url over the shared transport tr.
func newLoad(url string, n int, tr http.RoundTripper, timeout time.Duration) (*load, error) {
	l := &load{url: url, clients: make([]*http.Client, n), last: make([]string, n), inFlight: make([]int, n)}
	for i := range l.clients {
		c, err := newClient(tr, timeout)
		if err != nil {
			return nil, err
		}
		l.clients[i] = c
	}
	return l, nil
}

// newClient returns a client with a fresh cookie jar, as a new browser.
func newClient(tr http.RoundTripper, timeout time.Duration) (*http.Client, error) {
	jar, err := cookiejar.New(nil)
	if err != nil {
		return nil, fmt.Errorf("cookie jar: %w", err)
	}
	return &http.Client{Transport: tr, Jar: jar, Timeout: timeout}, nil
}

// newTransport returns the transport the harness's clients share: enough
// idle connections that a steady load reuses them instead of churning
// through ephemeral ports, and no proxy from the environment.
func newTransport() *http.Transport {
	return &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		MaxIdleConns:        512,
		MaxIdleConnsPerHost: 512,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}
}

// run sends sc.requests() requests, the i-th at start + i×period from
// client i mod Clients, and returns their records once all are answered or
// have failed. It stops sending early only when ctx ends.
func (l *load) run(ctx context.Context, sc Scenario, start time.Time) []record {
	n := int(sc.requests())
	recs := make([]record, n)
	timer := time.NewTimer(0)
	defer timer.Stop()
	var wg sync.WaitGroup
	sent := 0
	for ; sent < n; sent++ {
		if d := time.Until(start.Add(time.Duration(sent) * sc.period())); d > 0 {
			timer.Reset(d)
			select {
			case <-ctx.Done():
			case <-timer.C:
			}
		}
		if ctx.Err() != nil {
			break
		}
		i, method := sent, http.MethodGet
		if sc.isPost(i) {
			method = http.MethodPost
		}
		wg.Go(func() {
			// Each goroutine writes its own element; wg.Wait orders
			// the writes before the read below.
			recs[i] = l.do(ctx, start, i%len(l.clients), method)
		})
	}
	wg.Wait()
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
		r.fail = failKind(err)
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		r.fail = fmt.Sprintf("HTTP %d", resp.StatusCode)
	case resp.Header.Get(backendHeader) == "":
		r.fail = "no " + backendHeader
	default:
		r.backend = resp.Header.Get(backendHeader)
	}
	return r
}

// failKind names a transport error for Result.Failures.
func failKind(err error) string {
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return "timeout"
	}
	return "conn"
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
		c, err := newClient(tr, timeout)
		if err != nil {
			return 0, err
		}
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
