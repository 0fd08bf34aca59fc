package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
)

// maxCheckBody is how much of a check's response body is searched for
// expect_body; a health page is short.
const maxCheckBody = 64 << 10

// checkUserAgent names the checks in backends' access logs.
const checkUserAgent = "affinity-health-check"

// checkers runs the active health checks of one configuration's pools: a
// goroutine per backend. It starts when the server starts serving and stops
// on Shutdown; a hot reload stops the checkers of the old state and starts
// those of the new, carrying the verdicts of kept backends over (reload.go).
type checkers struct {
	// list holds a checker per backend of every pool with checks. They
	// are made before they run so that a reload can hand them the state
	// of the checks they replace.
	list   []*checker
	client *http.Client

	mu      sync.Mutex
	cancel  context.CancelFunc // set by start
	stopped bool               // set by stop; start does nothing after it
	wg      sync.WaitGroup
}

// newCheckers prepares the checks of pools; nothing runs until start.
func newCheckers(pools []*pool) *checkers {
	c := &checkers{client: newCheckClient()}
	for _, p := range pools {
		if p.health == nil {
			continue
		}
		for _, b := range p.backends {
			c.list = append(c.list, newChecker(p, b, c.client))
		}
	}
	return c
}

// newCheckClient returns the client checks use: a new connection per check,
// as HAProxy does, so that a check proves a backend accepts connections and
// answers on one, which a pooled connection would hide; and redirects are
// answers, not something to follow.
func newCheckClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:              nil,
			DialContext:        (&net.Dialer{KeepAlive: -1}).DialContext,
			DisableKeepAlives:  true,
			DisableCompression: true,
			ForceAttemptHTTP2:  false,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// start launches the checkers. It does nothing if they are running or were
// stopped.
func (c *checkers) start() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cancel != nil || c.stopped {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	for _, ck := range c.list {
		c.wg.Go(func() { ck.run(ctx) })
	}
}

// stop ends every check and waits for the checkers to return. A check under
// way is abandoned without a verdict: the backend stays as it was.
func (c *checkers) stop() {
	c.mu.Lock()
	c.stopped = true
	cancel := c.cancel
	c.mu.Unlock()
	if cancel != nil {
		cancel()
		c.wg.Wait()
	}
}

// checker checks one backend.
type checker struct {
	pool *pool
	id   string
	// url is the check path on the backend's scheme and host: a path in
	// the backend's URL is for forwarded requests, not for the check.
	url    string
	cfg    *config.HealthCheck
	client *http.Client
	state  healthState
	stats  *backendStats // where the latest result is shown
}

func newChecker(p *pool, b *balancer.Backend, client *http.Client) *checker {
	if p.checkClient != nil {
		// The pool verifies its backends' certificates its own way.
		client = p.checkClient
	}
	return &checker{
		pool:   p,
		id:     b.ID,
		url:    b.URL.Scheme + "://" + b.URL.Host + p.health.Path,
		cfg:    p.health,
		client: client,
		state:  healthState{rise: p.health.Rise, fall: p.health.Fall, up: true},
		stats:  statsOf(b),
	}
}

// checkHealthPath rejects a check path that would not make a valid request
// URI, so that a bad one fails NewServer rather than every check.
func checkHealthPath(path string) error {
	if _, err := url.ParseRequestURI(path); err != nil || path[0] != '/' {
		return fmt.Errorf("health_check path %q must be an absolute path", path)
	}
	return nil
}

// run checks the backend every interval until ctx ends. The first check
// comes after a random part of the interval and each next one within a
// tenth of it either side, so that the checks of many backends, and of
// several proxies, do not fall into step.
func (ck *checker) run(ctx context.Context) {
	t := time.NewTimer(rand.N(ck.cfg.Interval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ok, reason, err := ck.probe(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil && localResource(err) {
			// The check could not be made: a verdict on the proxy's
			// host, not on the backend, which keeps its state.
			_ = ck.pool.localFailure(err, true)
			t.Reset(jitter(ck.cfg.Interval))
			continue
		}
		ck.pool.connected()
		ck.stats.checked(ok, reason, time.Now())
		if !ok {
			if ce := ck.pool.log.Check(zap.DebugLevel, "health check failed"); ce != nil {
				ce.Write(zap.String("pool", ck.pool.name), zap.String("backend", ck.id), zap.String("reason", reason))
			}
		}
		if n, changed := ck.state.observe(ok); changed {
			// The backend ID came from the pool, so this cannot fail.
			_ = ck.pool.setHealthy(ck.id, ok, zap.String("reason", reason), zap.Int("checks", n))
		}
		t.Reset(jitter(ck.cfg.Interval))
	}
}

// jitter returns d moved by up to a tenth of d either way.
func jitter(d time.Duration) time.Duration {
	if spread := d / 5; spread > 0 {
		return d - d/10 + rand.N(spread)
	}
	return d
}

// probe runs one check, reporting whether it passed and, for the log, what
// it saw; and the error, when no answer came.
func (ck *checker) probe(ctx context.Context) (bool, string, error) {
	ctx, cancel := context.WithTimeout(ctx, ck.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ck.url, nil)
	if err != nil {
		return false, err.Error(), err
	}
	req.Header.Set("User-Agent", checkUserAgent)
	if ck.cfg.Host != "" {
		req.Host = ck.cfg.Host
	}
	res, err := ck.client.Do(req)
	if err != nil {
		return false, failureReason(err), err
	}
	defer res.Body.Close()
	status := "status " + strconv.Itoa(res.StatusCode)
	if res.StatusCode < ck.cfg.StatusMin || res.StatusCode > ck.cfg.StatusMax {
		return false, status, nil
	}
	if ck.cfg.Body != "" {
		body, err := io.ReadAll(io.LimitReader(res.Body, maxCheckBody))
		if err != nil {
			return false, failureReason(err), err
		}
		if !bytes.Contains(body, []byte(ck.cfg.Body)) {
			return false, "body mismatch", nil
		}
	}
	return true, status, nil
}

// failureReason names, in a few words for the log, why a check got no
// answer.
func failureReason(err error) string {
	switch {
	case isTimeout(err):
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed"
	}
	return err.Error()
}

// healthState counts consecutive check results against a backend's state:
// fall failures in a row take an up backend down, rise successes in a row
// bring a down one up, and any result agreeing with the state starts the
// count again.
type healthState struct {
	rise, fall int
	up         bool
	streak     int // consecutive results disagreeing with up
}

// observe records a check result. It reports whether the state changed and
// the streak of results that changed it.
func (h *healthState) observe(ok bool) (streak int, changed bool) {
	if ok == h.up {
		h.streak = 0
		return 0, false
	}
	h.streak++
	need := h.fall
	if !h.up {
		need = h.rise
	}
	if h.streak < need {
		return h.streak, false
	}
	n := h.streak
	h.up, h.streak = ok, 0
	return n, true
}
