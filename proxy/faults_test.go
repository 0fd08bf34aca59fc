package proxy

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// healthPath is where ctlBackend answers health checks.
const healthPath = "/healthz"

// bodyHeader is the response header in which a ctlBackend describes the
// request body it received: its length and a digest.
const bodyHeader = "X-Body"

// ctlBackend is a backend whose failures a test controls: kill closes its
// port, so that connections are refused; revive listens on the same port
// again; hang makes requests, health checks included, wait until the caller
// gives up; sick fails only the health path with a 503. Otherwise it answers
// 200 with its ID, like testutil.Backend.
type ctlBackend struct {
	t    *testing.T
	ID   string
	URL  *url.URL
	hang atomic.Bool
	sick atomic.Bool
	// sessions makes it issue an application session cookie, as
	// sessionApp does, to a request without one.
	sessions atomic.Bool
	issued   atomic.Int64
	hits     atomic.Int64 // requests seen, health checks apart

	done chan struct{} // closed at the end of the test: frees hung handlers
	mu   sync.Mutex
	srv  *httptest.Server // nil while killed
}

func startCtl(t *testing.T, id string) *ctlBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &ctlBackend{t: t, ID: id, URL: &url.URL{Scheme: "http", Host: ln.Addr().String()}, done: make(chan struct{})}
	b.serveOn(ln)
	t.Cleanup(b.kill)
	// Cleanups run last-in first-out: hung handlers are freed before kill
	// waits for them.
	t.Cleanup(func() { close(b.done) })
	return b
}

func startCtls(t *testing.T, ids ...string) []*ctlBackend {
	t.Helper()
	bs := make([]*ctlBackend, len(ids))
	for i, id := range ids {
		bs[i] = startCtl(t, id)
	}
	return bs
}

func (b *ctlBackend) serveOn(ln net.Listener) {
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: b}}
	srv.Start()
	b.mu.Lock()
	b.srv = srv
	b.mu.Unlock()
}

// kill closes the backend's listener and connections.
func (b *ctlBackend) kill() {
	b.mu.Lock()
	srv := b.srv
	b.srv = nil
	b.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

// revive serves again on the port kill closed.
func (b *ctlBackend) revive() {
	b.t.Helper()
	ln, err := net.Listen("tcp", b.URL.Host)
	if err != nil {
		b.t.Fatalf("revive %s: %v", b.ID, err)
	}
	b.serveOn(ln)
}

func (b *ctlBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == healthPath {
		switch {
		case b.hang.Load():
			b.wait(r)
		case b.sick.Load():
			w.WriteHeader(http.StatusServiceUnavailable)
		default:
			_, _ = io.WriteString(w, "ok")
		}
		return
	}
	b.hits.Add(1)
	body, _ := io.ReadAll(r.Body)
	if b.hang.Load() {
		b.wait(r)
		return
	}
	if _, err := r.Cookie(sessionCookie); err != nil && b.sessions.Load() {
		sid := b.ID + "-" + strconv.FormatInt(b.issued.Add(1), 10)
		http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: sid, Path: "/"})
	}
	w.Header().Set(testutil.IDHeader, b.ID)
	w.Header().Set(bodyHeader, describeBody(body))
	_, _ = io.WriteString(w, b.ID)
}

// wait blocks until the client gives up or the test ends.
func (b *ctlBackend) wait(r *http.Request) {
	select {
	case <-r.Context().Done():
	case <-b.done:
	}
}

// describeBody is what bodyHeader says of body.
func describeBody(body []byte) string {
	sum := sha256.Sum256(body)
	return strconv.Itoa(len(body)) + ":" + hex.EncodeToString(sum[:8])
}

// configure adds the backends to pc under their IDs.
func configure(pc *config.Pool, bs ...*ctlBackend) *config.Pool {
	for _, b := range bs {
		pc.Backends = append(pc.Backends, config.Backend{URL: b.URL, Name: b.ID, Weight: 1})
	}
	return pc
}

// resetBackend accepts connections, reads a request's headers and resets the
// connection without answering. It counts the requests it saw.
func resetBackend(t *testing.T) (*url.URL, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hits := new(atomic.Int64)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(waitFor))
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				hits.Add(1)
				// Linger 0 makes Close send a reset, not a FIN.
				if tc, ok := c.(*net.TCPConn); ok {
					_ = tc.SetLinger(0)
				}
			})
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	return &url.URL{Scheme: "http", Host: ln.Addr().String()}, hits
}

// available returns the IDs of the backends p now offers to requests.
func available(p *pool) []string {
	var ids []string
	for _, b := range p.snap.Load().available {
		ids = append(ids, b.ID)
	}
	return ids
}

// send issues a request through c and returns the reply; body may be nil.
func send(t *testing.T, c *http.Client, method, target string, body io.Reader, edit func(*http.Request)) reply {
	t.Helper()
	req, err := http.NewRequest(method, target, body)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(req)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, target, err)
	}
	return reply{status: resp.StatusCode, body: string(b), header: resp.Header}
}
