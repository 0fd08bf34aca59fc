package proxy

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// benchConfig routes everything to one pool of the given kind over urls,
// with access logging on or off. The pool retries and ejects with the
// defaults, and slow clients are bounded by the defaults, so that
// benchmarks count the bookkeeping of all three.
func benchConfig(b *testing.B, kind string, access bool, urls ...string) *config.Config {
	b.Helper()
	passive := config.DefaultPassive()
	p := &config.Pool{Name: "web", Balancer: config.Balancer{Type: kind, Options: cookieOptions()},
		Retries: config.DefaultRetries(), Passive: &passive}
	for i, raw := range urls {
		u, err := url.Parse(raw)
		if err != nil {
			b.Fatal(err)
		}
		p.Backends = append(p.Backends, config.Backend{URL: u, Name: "b" + strconv.Itoa(i), Weight: 1})
	}
	cfg := catchAll(p)
	cfg.Log.Access = access
	cfg.Server.SendTimeout, cfg.Server.MinBodyRate = config.DefaultSendTimeout, config.DefaultMinBodyRate
	return cfg
}

// discardLogger writes Info and above as JSON to nowhere, so that access
// logging pays for encoding but not for I/O.
func discardLogger() *zap.Logger {
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(io.Discard), zapcore.InfoLevel))
}

// stickyCookie returns the Cookie header a client placed by s carries.
func stickyCookie(b *testing.B, s *Server) string {
	b.Helper()
	w := newNullWriter()
	s.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil))
	sc := w.h.Get("Set-Cookie")
	v, _, _ := strings.Cut(sc, ";")
	if !strings.HasPrefix(v, "aff=") {
		b.Fatalf("no sticky cookie in %q", sc)
	}
	return v
}

// BenchmarkProxy forwards requests end to end over loopback: client, proxy
// and backend in this process, so allocations count all three. The "direct"
// case sends the same requests straight to the backend, as a baseline.
func BenchmarkProxy(b *testing.B) {
	backend := testutil.StartServer(b, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	urls := []string{backend.String(), backend.String(), backend.String()}
	tests := []struct {
		name   string
		kind   string // "": no proxy
		access bool
		cookie bool // send the sticky cookie a first response set
	}{
		{"direct", "", false, false},
		{"round-robin", "round-robin", false, false},
		{"round-robin+access-log", "round-robin", true, false},
		{"cookie/kept", "cookie", false, true},
		{"cookie/new", "cookie", false, false},
	}
	for _, tt := range tests {
		b.Run(tt.name, func(b *testing.B) {
			u := backend.String() + "/"
			var cookie string
			if tt.kind != "" {
				s, err := NewServer(benchConfig(b, tt.kind, tt.access, urls...), discardLogger())
				if err != nil {
					b.Fatal(err)
				}
				if tt.cookie {
					cookie = stickyCookie(b, s)
				}
				u = testutil.Serve(b, s).String() + "/"
			}
			c := testutil.Client(b)
			c.Transport.(*http.Transport).MaxIdleConnsPerHost = 256
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				req, _ := http.NewRequest(http.MethodGet, u, nil)
				if cookie != "" {
					req.Header.Set("Cookie", cookie)
				}
				for pb.Next() {
					resp, err := c.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
		})
	}
}

// cannedTransport answers every request with the same small response
// without any I/O or allocation, so that a benchmark through it counts
// only the proxy's own work.
type cannedTransport struct {
	res  http.Response
	body strings.Reader
}

func newCannedTransport() *cannedTransport {
	ct := &cannedTransport{}
	ct.res = http.Response{
		Status: "200 OK", StatusCode: http.StatusOK, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:        http.Header{"Content-Type": {"text/plain"}, "Content-Length": {"2"}},
		ContentLength: 2,
		Body:          io.NopCloser(&ct.body),
	}
	return ct
}

// RoundTrip is not safe for concurrent use: the benchmarks using it are
// sequential. It removes the sticky cookie the proxy added to the previous
// response, since a real transport returns a new header each time.
func (ct *cannedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	delete(ct.res.Header, "Set-Cookie")
	ct.body.Reset("ok")
	ct.res.Request = r
	return &ct.res, nil
}

// nullWriter is a ResponseWriter that keeps headers and drops the body.
type nullWriter struct{ h http.Header }

func newNullWriter() *nullWriter                  { return &nullWriter{h: http.Header{}} }
func (w *nullWriter) Header() http.Header         { return w.h }
func (w *nullWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *nullWriter) WriteHeader(int)             {}

// serveLoop runs ServeHTTP on req b.N times with a canned transport.
func serveLoop(b *testing.B, s *Server, req *http.Request) {
	b.Helper()
	w := newNullWriter()
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		s.ServeHTTP(w, req)
	}
}

// BenchmarkHandler counts the proxy's own cost per request: ServeHTTP with
// a transport that answers at once. Requests carry a connection's exchange,
// as they do when they come through Serve.
func BenchmarkHandler(b *testing.B) {
	urls := []string{"http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"}
	tests := []struct {
		name   string
		kind   string
		access bool
		cookie bool
	}{
		{"round-robin", "round-robin", false, false},
		{"round-robin+access-log", "round-robin", true, false},
		{"cookie/kept", "cookie", false, true},
		{"cookie/new", "cookie", false, false},
		{"round-robin+max_conns", "round-robin", false, false},
	}
	for _, tt := range tests {
		b.Run(tt.name, func(b *testing.B) {
			cfg := benchConfig(b, tt.kind, tt.access, urls...)
			if strings.HasSuffix(tt.name, "max_conns") {
				// Never reached: the cost of the check alone.
				for i := range cfg.Pools[0].Backends {
					cfg.Pools[0].Backends[i].MaxConns = 100
				}
				cfg.Pools[0].Queue = config.Queue{Max: 10, Timeout: time.Second}
			}
			s, err := NewServer(cfg, discardLogger())
			if err != nil {
				b.Fatal(err)
			}
			s.retry.next = newCannedTransport()
			req := httptest.NewRequest(http.MethodGet, "/", nil).WithContext(connContext(context.Background(), nil))
			if tt.cookie {
				req.Header.Set("Cookie", stickyCookie(b, s))
			}
			serveLoop(b, s, req)
		})
	}
}

// BenchmarkHandoff compares ways of telling the ReverseProxy's Rewrite
// which backend was picked (see exchange): the connection's exchange (what
// Serve does), a context per request (the fallback), and the inbound URL
// (free too, but ErrorHandler could then not name the pool and backend).
func BenchmarkHandoff(b *testing.B) {
	urls := []string{"http://127.0.0.1:1"}
	newServer := func(b *testing.B) *Server {
		s, err := NewServer(benchConfig(b, "round-robin", false, urls...), nil)
		if err != nil {
			b.Fatal(err)
		}
		s.retry.next = newCannedTransport()
		return s
	}
	b.Run("connection-exchange", func(b *testing.B) {
		req := httptest.NewRequest(http.MethodGet, "/", nil).WithContext(connContext(context.Background(), nil))
		serveLoop(b, newServer(b), req)
	})
	b.Run("request-context", func(b *testing.B) {
		req := httptest.NewRequest(http.MethodGet, "/", nil).WithContext(context.Background())
		serveLoop(b, newServer(b), req)
	})
	b.Run("inbound-url", func(b *testing.B) {
		s := newServer(b)
		rp := &httputil.ReverseProxy{
			Transport:  s.proxy.Transport,
			BufferPool: s.proxy.BufferPool,
			Rewrite: func(pr *httputil.ProxyRequest) {
				// pr.Out.URL already names the backend; Host is kept.
				pr.SetXForwarded()
			},
		}
		st := s.state.Load()
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		w := newNullWriter()
		b.ReportAllocs()
		for b.Loop() {
			clear(w.h)
			p := st.router.match(req.Host, req.URL.Path)
			pk, err := p.pick(req)
			if err != nil {
				b.Fatal(err)
			}
			req.URL.Scheme, req.URL.Host = pk.Backend.URL.Scheme, pk.Backend.URL.Host
			pk.Backend.Begin()
			rp.ServeHTTP(w, req)
			pk.Backend.Done()
		}
	})
}

// BenchmarkPick isolates routing and picking, the proxy's part of the hot
// path before ReverseProxy.
func BenchmarkPick(b *testing.B) {
	s, err := NewServer(benchConfig(b, "round-robin", false, "http://127.0.0.1:1", "http://127.0.0.1:2"), nil)
	if err != nil {
		b.Fatal(err)
	}
	st := s.state.Load()
	req := httptest.NewRequest(http.MethodGet, "/x", nil)
	b.ReportAllocs()
	for b.Loop() {
		p := st.router.match(req.Host, req.URL.Path)
		if _, err := p.pick(req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAdmit isolates what max_conns adds to a request's start and end:
// begin, the Begin and Done every request pays anyway, against admit with
// no max_conns (the hot path: one atomic load more) and with one never
// reached.
func BenchmarkAdmit(b *testing.B) {
	for _, limit := range []int{-1, 0, 100} {
		name := map[int]string{-1: "begin", 0: "admit/no-limit", 100: "admit/max_conns"}[limit]
		b.Run(name, func(b *testing.B) {
			cfg := benchConfig(b, "round-robin", false, "http://127.0.0.1:1")
			cfg.Pools[0].Backends[0].MaxConns = max(limit, 0)
			cfg.Pools[0].Queue = config.Queue{Max: 10, Timeout: time.Second}
			s, err := NewServer(cfg, discardLogger())
			if err != nil {
				b.Fatal(err)
			}
			p := s.state.Load().pool("web")
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			pk, err := p.pick(req)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if limit < 0 {
					pk.Backend.Begin()
				} else if _, err := p.admit(req, pk); err != nil {
					b.Fatal(err)
				}
				finished(pk.Backend)
			}
		})
	}
}
