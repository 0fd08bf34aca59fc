package proxy

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) {
		if binDir != "" {
			_ = os.RemoveAll(binDir)
		}
	}))
}

// waitFor bounds every wait of these tests on something that should
// happen at once; reaching it means the behaviour is broken.
const waitFor = 5 * time.Second

// testTimeouts are the config defaults.
var testTimeouts = config.Timeouts{Connect: 2 * time.Second, ResponseHeader: 30 * time.Second, IdleConn: 90 * time.Second}

// poolOf returns a pool called name over the given backends, named by
// their IDs.
func poolOf(name, kind string, o balancer.Options, backends ...*testutil.Backend) *config.Pool {
	p := &config.Pool{Name: name, Balancer: config.Balancer{Type: kind, Options: o}}
	for _, b := range backends {
		p.Backends = append(p.Backends, config.Backend{URL: b.URL, Name: b.ID, Weight: 1})
	}
	return p
}

// catchAll is a config sending every request to its only pool.
func catchAll(p *config.Pool) *config.Config {
	return &config.Config{
		Listen:   "127.0.0.1:0",
		Timeouts: testTimeouts,
		Routes:   []config.Route{{Pool: p.Name}},
		Pools:    []*config.Pool{p},
	}
}

func cookieOptions() balancer.Options {
	return balancer.Options{Cookie: balancer.CookieOptions{Name: "aff", Path: "/", HTTPOnly: true}}
}

// observed returns a logger recording entries of every level.
func observed() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(core), logs
}

// startProxy builds a Server for cfg and serves it on a loopback port until
// the test ends.
func startProxy(t *testing.T, cfg *config.Config, log *zap.Logger) (*Server, *url.URL) {
	t.Helper()
	s, err := NewServer(cfg, log)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	return s, testutil.Serve(t, s)
}

// reply is what a test needs of a response.
type reply struct {
	status int
	body   string
	header http.Header
}

// get sends a GET for target through c, after edit (if any) has changed
// the request.
func get(t *testing.T, c *http.Client, target string, edit func(*http.Request)) reply {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(req)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", target, err)
	}
	return reply{status: resp.StatusCode, body: string(body), header: resp.Header}
}

// entries returns the logged entries with the given message.
func entries(logs *observer.ObservedLogs, msg string) []observer.LoggedEntry {
	return logs.FilterMessage(msg).AllUntimed()
}

// startBackends starts a testutil.Backend per id.
func startBackends(t *testing.T, ids ...string) []*testutil.Backend {
	t.Helper()
	bs := make([]*testutil.Backend, len(ids))
	for i, id := range ids {
		bs[i] = testutil.StartBackend(t, id)
	}
	return bs
}

// jarClient is a client keeping cookies, as a browser would.
func jarClient(t *testing.T) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := testutil.Client(t)
	c.Jar = jar
	return c
}

// blockingBackend answers after release is closed, signalling each request
// it starts on started.
func blockingBackend(t *testing.T) (u *url.URL, started <-chan struct{}, release func()) {
	t.Helper()
	start := make(chan struct{}, 16)
	done := make(chan struct{})
	u = testutil.StartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start <- struct{}{}
		select {
		case <-done:
			_, _ = io.WriteString(w, "finished")
		case <-r.Context().Done():
		}
	}))
	release = sync.OnceFunc(func() { close(done) })
	// Cleanups run last-in first-out: this one frees blocked handlers
	// before the server's Close waits for them.
	t.Cleanup(release)
	return u, start, release
}
