package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest/observer"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// impatientBackend answers with its id a request whose body comes in
// full within giveUp, and gives up on one whose body stalls, as a server
// with a body timeout does: it closes the connection without an answer.
// gaveUp counts those; a body cut short is no give-up.
func impatientBackend(t *testing.T, id string, giveUp time.Duration, gaveUp *atomic.Int32) config.Backend {
	t.Helper()
	u := testutil.StartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(giveUp))
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				gaveUp.Add(1)
			}
			panic(http.ErrAbortHandler)
		}
		_, _ = io.WriteString(w, id)
	}))
	return config.Backend{URL: u, Name: id, Weight: 1}
}

// slowBodyConfig routes every request to a pool of three impatient
// backends, which give up on a body longer than bodyStall in coming, with
// passive health that ejects a backend at its first failure, and retries.
func slowBodyConfig(t *testing.T, gaveUp *atomic.Int32) *config.Config {
	t.Helper()
	giveUp := bodyStall + bodyStall/4
	return catchAll(&config.Pool{
		Name:     "web",
		Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{
			impatientBackend(t, "a", giveUp, gaveUp),
			impatientBackend(t, "b", giveUp, gaveUp),
			impatientBackend(t, "c", giveUp, gaveUp),
		},
		Passive: &config.Passive{Failures: 1, Eject: time.Minute, MaxEject: time.Minute},
		Retries: config.Retries{Count: 2, MaxBody: 64 << 10},
	})
}

// checkNoBackendBlamed fails t if any backend of s's only pool was
// ejected, logged as failed, or counted a 5xx.
func checkNoBackendBlamed(t *testing.T, s *Server, logs *observer.ObservedLogs) {
	t.Helper()
	p := s.state.Load().pools[0]
	if got := available(p); len(got) != len(p.backends) {
		t.Errorf("available %v, want all %d", got, len(p.backends))
	}
	if n := len(entries(logs, "backend ejected")) + len(entries(logs, "backend request failed")); n != 0 {
		t.Errorf("%d ejections and failures logged, want none", n)
	}
	for _, b := range p.backends {
		if n := statsOf(b).responses[classOf(http.StatusBadGateway)].Load(); n != 0 {
			t.Errorf("backend %s counted %d 5xx, want none", b.ID, n)
		}
	}
}

// A client whose body stalls until its backend gives up is at fault, not
// the backend: it is answered 408 (once it sends more: http.Transport
// waits for the read of the body in progress), its request is sent to no
// other backend, and no backend is ejected or counted a failure. Clients
// that sent part of a body, then stalled past the backends' body timeout,
// were answered 502 and ejected healthy backends. So with the client's
// other failures along a body: one that leaves, one whose chunked body
// breaks.
func TestSlowClientBodyEjectsNoBackend(t *testing.T) {
	tests := []struct {
		name        string
		head, first string // sent at once
		// then, once the backends gave up (or at once, if not stall)
		then  string
		leave bool // the client closes its connection instead
		stall bool // the backends give up before then
		want  int  // the answer; 0 for none
	}{
		{
			name: "stalls, then sends the rest", stall: true,
			head: "PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n", first: "0123456789",
			then: strings.Repeat("x", 90), want: http.StatusRequestTimeout,
		},
		{
			name: "stalls, then sends the rest of a chunked body", stall: true,
			head: "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", first: "a\r\n0123456789\r\n",
			then: "0\r\n\r\n", want: http.StatusRequestTimeout,
		},
		{
			name: "stalls, then leaves", stall: true, leave: true,
			head: "PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n", first: "0123456789",
		},
		{
			name: "leaves mid-body", leave: true,
			head: "PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n", first: "0123456789",
		},
		{
			name: "breaks its chunked body",
			head: "PUT /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", first: "a\r\n0123456789\r\n",
			then: "zz\r\n", want: http.StatusBadRequest,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var gaveUp atomic.Int32
			log, logs := observed()
			s, u := startProxy(t, slowBodyConfig(t, &gaveUp), log)
			const clients = 6 // two for each backend
			conns := make([]net.Conn, clients)
			readers := make([]*bufio.Reader, clients)
			for i := range conns {
				conns[i], readers[i] = testutil.DialRaw(t, u.Host, waitFor)
				if _, err := io.WriteString(conns[i], tt.head+tt.first); err != nil {
					t.Fatal(err)
				}
			}
			if tt.stall {
				testutil.Eventually(t, waitFor, "the backends did not give up on the stalled bodies", func() bool {
					return gaveUp.Load() >= clients
				})
				// A backend counts its give-up before its connection
				// closes, and the proxy sees the close later still: the
				// rest of a body sent before then would end the proxy's
				// wait first, and the backend's end come after it, as a
				// failure of the backend's own.
				testutil.Eventually(t, waitFor, "the proxy to close its connections to the backends that gave up", func() bool {
					return s.transport.cur.Load().conns.Load() == 0
				})
			}
			for i, c := range conns {
				if tt.leave {
					_ = c.Close()
					continue
				}
				// The answer may have come already.
				_, _ = io.WriteString(c, tt.then)
				resp, err := http.ReadResponse(readers[i], nil)
				if err != nil {
					t.Fatalf("client %d: %v", i, err)
				}
				_ = resp.Body.Close()
				if resp.StatusCode != tt.want {
					t.Errorf("client %d: status %d, want %d", i, resp.StatusCode, tt.want)
				}
			}
			// Every request has ended once the server has shut down.
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			if err := s.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			checkNoBackendBlamed(t, s, logs)
			if n, want := gaveUp.Load(), map[bool]int32{true: clients}[tt.stall]; n != want {
				t.Errorf("backends gave up on %d requests, want %d: a request was sent again", n, want)
			}
		})
	}
}

// A backend that fails on its own is charged with it, as before, even
// while the proxy waits for the client's body: stalled takes for a give-up
// only a backend's end that came bodyStall or more into a read waiting for
// a body still coming. Here the backend resets its connection after the
// whole body, which came at once or slowly, or after part of it, the rest
// sent by the client at once after.
func TestBackendFailingMidBodyCharged(t *testing.T) {
	const (
		length  = "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n"
		chunked = "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
	)
	tests := []struct {
		name              string
		head, first, rest string
		part              bool          // the backend resets after the first part
		pause             time.Duration // before the client sends the rest
	}{
		{name: "after the body, sent at once", head: length, first: "0123456789", rest: "0123456789"},
		{name: "after the body, sent slowly", head: length, first: "0123456789", rest: "0123456789",
			pause: bodyStall + bodyStall/4},
		{name: "after a chunked body, sent slowly", head: chunked, first: "a\r\n0123456789\r\n", rest: "0\r\n\r\n",
			pause: bodyStall + bodyStall/4},
		{name: "after part of the body", head: length, first: "0123456789", rest: "0123456789", part: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := testutil.StartRaw(t, func(c net.Conn, br *bufio.Reader) {
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				if tt.part {
					_, err = io.ReadFull(req.Body, make([]byte, 10))
				} else {
					_, err = io.ReadAll(req.Body)
				}
				if err == nil {
					_ = c.(*net.TCPConn).SetLinger(0)
				}
			})
			pc := &config.Pool{
				Name:     "web",
				Balancer: config.Balancer{Type: "round-robin"},
				Backends: []config.Backend{{URL: &url.URL{Scheme: "http", Host: b.Addr()}, Name: "bad", Weight: 1}},
				Passive:  &config.Passive{Failures: 1, Eject: time.Minute, MaxEject: time.Minute},
			}
			log, logs := observed()
			_, u := startProxy(t, catchAll(pc), log)
			c, br := testutil.DialRaw(t, u.Host, waitFor+tt.pause)
			if _, err := io.WriteString(c, tt.head+tt.first); err != nil {
				t.Fatal(err)
			}
			if tt.part {
				testutil.Eventually(t, waitFor, "the backend did not reset", func() bool { return b.Closed() == 1 })
			}
			time.Sleep(tt.pause) // a client slower than bodyStall
			if _, err := io.WriteString(c, tt.rest); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusBadGateway {
				t.Errorf("status %d, want 502", resp.StatusCode)
			}
			if n := len(entries(logs, "backend request failed")); n != 1 {
				t.Errorf("%d failures logged, want 1", n)
			}
		})
	}
}

// Over HTTP/2 too: a stream whose body stalls until the backend gives up
// is answered 408 and charges no backend.
func TestSlowClientBodyH2(t *testing.T) {
	var gaveUp atomic.Int32
	log, logs := observed()
	cfg := slowBodyConfig(t, &gaveUp)
	cert := newTestCert(t)
	cfg.TLS = &config.TLS{Cert: cert.certFile, Key: cert.keyFile}
	s, u := startProxy(t, cfg, log)
	tr := &http.Transport{ForceAttemptHTTP2: true, TLSClientConfig: &tls.Config{RootCAs: cert.roots}}
	t.Cleanup(tr.CloseIdleConnections)
	const clients = 3
	type answer struct {
		status, proto int
		err           error
	}
	answers := make(chan answer, clients)
	writers := make([]*io.PipeWriter, clients)
	for i := range writers {
		pr, pw := io.Pipe()
		writers[i] = pw
		req, err := http.NewRequest(http.MethodPut, "https://"+u.Host+"/upload", pr)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			resp, err := tr.RoundTrip(req)
			if err != nil {
				answers <- answer{err: err}
				return
			}
			_ = resp.Body.Close()
			answers <- answer{status: resp.StatusCode, proto: resp.ProtoMajor}
		}()
		if _, err := io.WriteString(pw, "0123456789"); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, waitFor, "the backends did not give up on the stalled bodies", func() bool {
		return gaveUp.Load() >= clients
	})
	for _, pw := range writers {
		_, _ = io.WriteString(pw, "the rest")
		_ = pw.Close()
	}
	for range clients {
		a := <-answers
		if a.err != nil || a.status != http.StatusRequestTimeout || a.proto != 2 {
			t.Errorf("answer %+v, want 408 over HTTP/2", a)
		}
	}
	checkNoBackendBlamed(t, s, logs)
}
