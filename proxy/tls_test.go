package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// testCert is a certificate for 127.0.0.1, in PEM files.
type testCert struct {
	certFile, keyFile string
	roots             *x509.CertPool // trusts the certificate
}

// newTestCert makes a certificate for 127.0.0.1 and names, valid for an
// hour, signed by an authority of its own.
func newTestCert(t *testing.T, names ...string) testCert {
	t.Helper()
	c := testutil.NewCerts(t, names...)
	return testCert{certFile: c.ServerCert, keyFile: c.ServerKey, roots: c.Client.RootCAs}
}

func writePEM(t *testing.T, path, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// An HTTP/2 client over TLS is routed as an HTTP/1.1 one: its requests
// share one connection, so each gets an exchange of its own, and many
// clients multiplexed on it concurrently each keep their backend.
func TestTLSListenerStickyRouting(t *testing.T) {
	cert := newTestCert(t)
	tests := []struct {
		name  string
		h2    bool
		proto int
	}{
		{"HTTP/2", true, 2},
		{"HTTP/1.1", false, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bs := startBackends(t, "a", "b", "c")
			cfg := catchAll(poolOf("web", "cookie", cookieOptions(), bs...))
			cfg.TLS = &config.TLS{Cert: cert.certFile, Key: cert.keyFile}
			_, u := startProxy(t, cfg, nil)
			u.Scheme = "https"
			tr := &http.Transport{ForceAttemptHTTP2: tt.h2, TLSClientConfig: &tls.Config{RootCAs: cert.roots}}
			t.Cleanup(tr.CloseIdleConnections)

			const clients, requests = 6, 20
			jars := make([]*http.Client, clients)
			pinned := make([]string, clients)
			for i := range jars {
				jar, err := cookiejar.New(nil)
				if err != nil {
					t.Fatal(err)
				}
				jars[i] = &http.Client{Transport: tr, Jar: jar}
				resp, err := jars[i].Get(u.String())
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				_ = resp.Body.Close()
				if resp.ProtoMajor != tt.proto || resp.TLS == nil {
					t.Fatalf("response over %s (TLS %v), want HTTP/%d over TLS", resp.Proto, resp.TLS != nil, tt.proto)
				}
				if len(resp.Cookies()) != 1 {
					t.Fatalf("first response sets cookies %v, want the sticky one", resp.Cookies())
				}
				pinned[i] = string(body)
			}
			if got, _ := bs[0].Last(); got.Header.Get("X-Forwarded-Proto") != "https" {
				t.Errorf("backend saw X-Forwarded-Proto %q, want https", got.Header.Get("X-Forwarded-Proto"))
			}

			var wg sync.WaitGroup
			errs := make(chan error, clients*requests)
			for i, c := range jars {
				for range requests {
					wg.Go(func() {
						resp, err := c.Get(u.String())
						if err != nil {
							errs <- err
							return
						}
						body, err := io.ReadAll(resp.Body)
						_ = resp.Body.Close()
						if err != nil || string(body) != pinned[i] {
							errs <- fmt.Errorf("client %d pinned to %s was served by %q (%v)", i, pinned[i], body, err)
						}
					})
				}
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
		})
	}
}

func TestTLSListenerBadFiles(t *testing.T) {
	cert, other := newTestCert(t), newTestCert(t)
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		tls  config.TLS
		is   error // nil: any error
	}{
		{"missing cert", config.TLS{Cert: filepath.Join(t.TempDir(), "none.pem"), Key: cert.keyFile}, fs.ErrNotExist},
		{"missing key", config.TLS{Cert: cert.certFile, Key: filepath.Join(t.TempDir(), "none.pem")}, fs.ErrNotExist},
		{"key of another certificate", config.TLS{Cert: cert.certFile, Key: other.keyFile}, nil},
		{"not PEM", config.TLS{Cert: garbage, Key: garbage}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := catchAll(poolOf("web", "round-robin", cookieOptions(), testutil.StartBackend(t, "a")))
			cfg.TLS = &tt.tls
			_, err := NewServer(cfg, nil)
			if err == nil || (tt.is != nil && !errors.Is(err, tt.is)) {
				t.Errorf("NewServer = %v, want an error (%v)", err, tt.is)
			}
		})
	}
}

// tlsBackend is an https backend that answers "secure" and counts its
// health checks; ca is a PEM file of its certificate, valid for 127.0.0.1
// and example.com.
type tlsBackend struct {
	url    *url.URL
	ca     string
	checks atomic.Int64
}

func startTLSBackend(t *testing.T) *tlsBackend {
	t.Helper()
	tb := &tlsBackend{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			tb.checks.Add(1)
		}
		_, _ = io.WriteString(w, "secure")
	}))
	// Refused handshakes are what some cases test, not news.
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	tb.url = u
	tb.ca = filepath.Join(t.TempDir(), "ca.pem")
	writePEM(t, tb.ca, "CERTIFICATE", srv.Certificate().Raw)
	return tb
}

func TestHTTPSBackends(t *testing.T) {
	tb := startTLSBackend(t)
	tests := []struct {
		name   string
		tls    *config.BackendTLS
		status int
	}{
		{"system roots", nil, http.StatusBadGateway},
		{"ca", &config.BackendTLS{CA: tb.ca}, http.StatusOK},
		{"ca and server name", &config.BackendTLS{CA: tb.ca, ServerName: "example.com"}, http.StatusOK},
		{"ca and a name the certificate lacks", &config.BackendTLS{CA: tb.ca, ServerName: "wrong.test"}, http.StatusBadGateway},
		{"verification skipped", &config.BackendTLS{InsecureSkipVerify: true}, http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
				Backends: []config.Backend{{URL: tb.url, Name: "tls"}}, TLS: tt.tls}
			_, u := startProxy(t, catchAll(p), nil)
			r := get(t, testutil.Client(t), u.String(), nil)
			if r.status != tt.status {
				t.Fatalf("status %d, want %d", r.status, tt.status)
			}
			if tt.status == http.StatusOK && r.body != "secure" {
				t.Errorf("body %q, want the backend's", r.body)
			}
		})
	}
}

// Pools verifying differently never share a connection: one that skips
// verification must not lend its connection to one that would refuse the
// certificate. Pools with equal settings do share.
func TestHTTPSBackendTransports(t *testing.T) {
	tb := startTLSBackend(t)
	pool := func(name string, tc *config.BackendTLS) *config.Pool {
		return &config.Pool{Name: name, Balancer: config.Balancer{Type: "round-robin"},
			Backends: []config.Backend{{URL: tb.url, Name: "tls"}}, TLS: tc}
	}
	lax := &config.BackendTLS{InsecureSkipVerify: true}
	cfg := &config.Config{
		Listen: "127.0.0.1:0", Timeouts: testTimeouts,
		Routes: []config.Route{
			{Match: config.Match{Path: "/lax/"}, Pool: "lax"},
			{Match: config.Match{Path: "/lax2/"}, Pool: "lax2"},
			{Match: config.Match{Path: "/strict/"}, Pool: "strict"},
		},
		Pools: []*config.Pool{
			pool("lax", lax), pool("lax2", &config.BackendTLS{InsecureSkipVerify: true}),
			pool("strict", &config.BackendTLS{CA: tb.ca, ServerName: "wrong.test"}),
		},
	}
	s, u := startProxy(t, cfg, nil)
	c := testutil.Client(t)
	for _, step := range []struct {
		path   string
		status int
	}{{"/lax/", 200}, {"/strict/", 502}, {"/lax2/", 200}, {"/strict/", 502}} {
		if r := get(t, c, u.String()+step.path, nil); r.status != step.status {
			t.Errorf("GET %s: status %d, want %d", step.path, r.status, step.status)
		}
	}
	ps := s.state.Load().pools
	if ps[0].transport == nil || ps[0].transport != ps[1].transport || ps[0].transport == ps[2].transport {
		t.Errorf("transports %p %p %p: want the lax pools to share one, and strict its own", ps[0].transport, ps[1].transport, ps[2].transport)
	}
}

// Health checks verify a pool's backends as its requests do.
func TestHTTPSBackendHealthChecks(t *testing.T) {
	tests := []struct {
		name string
		tls  func(tb *tlsBackend) *config.BackendTLS
		up   bool
	}{
		{"ca", func(tb *tlsBackend) *config.BackendTLS { return &config.BackendTLS{CA: tb.ca} }, true},
		{"system roots", func(*tlsBackend) *config.BackendTLS { return nil }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tb := startTLSBackend(t)
			hc := config.DefaultHealthCheck()
			hc.Interval, hc.Timeout, hc.Rise, hc.Fall = 50*time.Millisecond, 40*time.Millisecond, 1, 1
			p := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
				Backends: []config.Backend{{URL: tb.url, Name: "tls"}}, TLS: tt.tls(tb), HealthCheck: &hc}
			s, _ := startProxy(t, catchAll(p), nil)
			available := func() int { return len(s.state.Load().pools[0].snap.Load().available) }
			if tt.up {
				testutil.Eventually(t, waitFor, "three checks answered", func() bool { return tb.checks.Load() >= 3 })
				if available() != 1 {
					t.Error("backend taken down although its checks pass")
				}
				return
			}
			testutil.Eventually(t, waitFor, "backend down", func() bool { return available() == 0 })
			if n := tb.checks.Load(); n != 0 {
				t.Errorf("backend answered %d checks over a connection the pool should refuse", n)
			}
		})
	}
}

func TestHTTPSBackendBadCA(t *testing.T) {
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	if err := os.WriteFile(garbage, []byte("no PEM here"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		ca   string
		is   error
	}{
		{"missing", filepath.Join(t.TempDir(), "none.pem"), fs.ErrNotExist},
		{"not PEM", garbage, config.ErrNoCertificate},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := &url.URL{Scheme: "https", Host: "127.0.0.1:9"}
			p := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
				Backends: []config.Backend{{URL: u, Name: "tls"}}, TLS: &config.BackendTLS{CA: tt.ca}}
			if _, err := NewServer(catchAll(p), nil); !errors.Is(err, tt.is) {
				t.Errorf("NewServer = %v, want %v", err, tt.is)
			}
		})
	}
}
