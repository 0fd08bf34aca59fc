package proxy

import (
	"bufio"
	"bytes"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/net/http/httpguts"

	"github.com/affinityproxy/affinity/config"
)

// A target rejection lets through is written to the backend, after
// Rewrite pointed it there, as a request line of exactly three parts, which
// net/http's own parser reads back with the path the proxy routed on: no
// backend can split it another way, or be sent another path.
func FuzzTargetForwarded(f *testing.F) {
	for _, s := range []string{
		"/", "/a%20b?q=%23", "/q?a=1 HTTP/1.1", "/q#f", "/q?x={1}|2", "/\xc3\xa9", "*", "/a\x00",
		"http://app.example/p?q", "x:opaque", "//double", "/a/../b",
	} {
		f.Add(s)
	}
	backend := &url.URL{Scheme: "http", Host: "127.0.0.1:8080"}
	f.Fuzz(func(t *testing.T, target string) {
		u, err := url.ParseRequestURI(target)
		if err != nil {
			return // net/http's servers refuse it before the proxy sees it
		}
		in := &http.Request{Method: "GET", URL: u, RequestURI: target, Host: "app.example", Header: http.Header{}}
		if rejection(in) != 0 {
			return
		}
		out := in.Clone(in.Context())
		pr := httputil.ProxyRequest{In: in, Out: out}
		pr.SetURL(backend)
		out.Host = in.Host
		var buf bytes.Buffer
		if err := out.Write(&buf); err != nil {
			t.Fatalf("Write of %q: %v", target, err)
		}
		line, _, _ := strings.Cut(buf.String(), "\r\n")
		if n := len(strings.Split(line, " ")); n != 3 {
			t.Fatalf("target %q written as request line %q, of %d parts", target, line, n)
		}
		got, err := http.ReadRequest(bufio.NewReader(&buf))
		if err != nil {
			t.Fatalf("target %q written as %q: ReadRequest: %v", target, line, err)
		}
		if got.URL.Path != in.URL.Path && got.URL.Path != "/"+in.URL.Path {
			t.Fatalf("target %q routed on path %q, written as %q, read back with path %q", target, in.URL.Path, line, got.URL.Path)
		}
	})
}

// A Host (or :authority) rejection lets through is one host and at most a
// port as net/url parses it, the same host the router matches, and net/http
// reads it back as the Host header of the request written to the backend:
// no list, no parameter, no second name a backend could read instead.
func FuzzHostForwarded(f *testing.F) {
	for _, s := range []string{
		"", "app.example", "App.Example.:443", "app.example:", "127.0.0.1:8080", "[::1]:8080", "[::ffff:1.2.3.4]",
		"app.example:443,evil.example", "app.example;evil", "app%2eexample", "app.example:99999", "::1",
		"[fe80::1%25eth0]", "user@app.example", "app.example:1:2", "[::1]x", "a b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, host string) {
		in := &http.Request{Method: "GET", URL: &url.URL{Path: "/"}, RequestURI: "/", Host: host, Header: http.Header{}}
		if rejection(in) != 0 || host == "" {
			return
		}
		u, err := url.Parse("http://" + host + "/")
		if err != nil {
			t.Fatalf("host %q accepted, but url.Parse: %v", host, err)
		}
		if u.Host != host {
			t.Fatalf("host %q accepted, url.Parse reads host %q", host, u.Host)
		}
		if got, want := hostOnly(host), strings.TrimSuffix(u.Hostname(), "."); got != want {
			t.Fatalf("host %q routed as %q, url.Parse reads %q", host, got, want)
		}
		if p := u.Port(); p != "" {
			if n, err := strconv.Atoi(p); err != nil || n > 65535 {
				t.Fatalf("host %q accepted with port %q", host, p)
			}
		}
		var buf bytes.Buffer
		if err := in.Write(&buf); err != nil {
			t.Fatalf("Write with host %q: %v", host, err)
		}
		got, err := http.ReadRequest(bufio.NewReader(&buf))
		if err != nil {
			t.Fatalf("host %q written as %q: ReadRequest: %v", host, buf.String(), err)
		}
		if got.Host != host {
			t.Fatalf("host %q read back as %q", host, got.Host)
		}
	})
}

// An Upgrade rejection lets through is forwarded only as a list of
// protocols that net/http's token matching reads element by element, in
// the printable ASCII ReverseProxy requires (else it would answer through
// the ErrorHandler, for the backend), and never with h2c in it in any
// spelling: an upgrade naming a protocol that carries HTTP is dropped.
func FuzzUpgradeForwarded(f *testing.F) {
	for _, s := range []string{
		"websocket", "h2c", "H2C, websocket", "websocket/13 , x-other,", "h2c;", `"h2c"`, "websocket h2c", "h2 c",
		"h2c/1.0", "x-h2c-14", "HTTP/2.0", "TLS/1.2", "w\xe9bsocket", "web\tsocket", "", ",,", "a/b/c",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		in := &http.Request{Method: "GET", URL: &url.URL{Path: "/"}, RequestURI: "/", Host: "app.example",
			Header: http.Header{"Connection": {"Upgrade"}, "Upgrade": {v}}}
		if rejection(in) != 0 {
			return
		}
		up := upgrading(in)
		got, kept := in.Header["Upgrade"]
		if !kept {
			if !containsFold(v, "h2") && !containsFold(v, "http") && !containsFold(v, "tls") {
				t.Fatalf("upgrade %q dropped", v)
			}
			return
		}
		if up != (v != "") {
			t.Fatalf("upgrade %q: upgrading %v", v, up)
		}
		if containsFold(got[0], "h2c") {
			t.Fatalf("upgrade %q forwarded", v)
		}
		for i := 0; i < len(v); i++ {
			if v[i] < ' ' || v[i] > '~' {
				t.Fatalf("upgrade %q forwarded with byte %#x", v, v[i])
			}
		}
		for elem := range strings.SplitSeq(v, ",") {
			if elem = strings.Trim(elem, " "); elem != "" && !httpguts.HeaderValuesContainsToken(got, elem) {
				t.Fatalf("upgrade %q: net/http does not read %q in it", v, elem)
			}
		}
	})
}

// What docs/security.md says of each refusal, over HTTP/1 and HTTP/2: the
// status, whether affinity_requests_rejected_total counts it, whether it
// has an access log line, and that nothing reaches a backend. The proxy's
// own refusals are counted and logged; what Go's servers refuse before
// the proxy sees a request (malformed HTTP/1, HTTP/2 stream errors) is
// neither, nor is OPTIONS *, which the proxy answers itself.
func TestRefusalsCountedAndLogged(t *testing.T) {
	const ok = "GET / HTTP/1.1\r\nHost: app.example\r\n\r\n"
	h1 := []struct {
		name    string
		raw     string
		status  int
		counted bool // in affinity_requests_rejected_total and the access log
	}{
		{"CONNECT", "CONNECT app.example:443 HTTP/1.1\r\nHost: app.example:443\r\n\r\n", 501, true},
		{"fragment in the target", "GET /a#b HTTP/1.1\r\nHost: app.example\r\n\r\n", 400, true},
		{"opaque target", "GET x:admin HTTP/1.1\r\nHost: app.example\r\n\r\n", 400, true},
		{"list of hosts", "GET / HTTP/1.1\r\nHost: a.example,b.example\r\n\r\n", 400, true},
		{"asterisk target of GET", "GET * HTTP/1.1\r\nHost: app.example\r\n\r\n", 400, true},
		{"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, true},
		{"Upgrade not a list", "GET / HTTP/1.1\r\nHost: app.example\r\nConnection: upgrade\r\nUpgrade: h2c;\r\n\r\n", 400, true},
		{"trailer not a token", "POST / HTTP/1.1\r\nHost: app.example\r\nTrailer: a b\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, true},
		{"OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n", 200, false},
		{"conflicting Content-Length", "POST / HTTP/1.1\r\nHost: app.example\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, false},
		{"NUL in a field", "GET / HTTP/1.1\r\nHost: app.example\r\nX: \x00\r\n\r\n", 400, false},
		{"unknown transfer coding", "POST / HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: gzip\r\n\r\n", 501, false},
		{"expectation failed", "POST / HTTP/1.1\r\nHost: app.example\r\nExpect: x\r\nContent-Length: 1\r\n\r\nx", 417, false},
		{"version 2.0", "GET / HTTP/2.0\r\nHost: app.example\r\n\r\n", 505, false},
		{"head too large", "GET / HTTP/1.1\r\nHost: app.example\r\nX: " + strings.Repeat("x", 16<<10) + "\r\n\r\n", 431, false},
	}
	for _, tt := range h1 {
		t.Run("HTTP/1/"+tt.name, func(t *testing.T) {
			lb := startLineBackend(t)
			s, u, logs := startLoggedProxy(t, lineBackendConfig(t, lb))
			rs := rawExchange(t, u, tt.raw+ok)
			if len(rs) != 1 || rs[0].StatusCode != tt.status {
				t.Errorf("%d answers, first %v; want one %d and the connection closed", len(rs), rs, tt.status)
			}
			checkRefusal(t, s, lb, logs, tt.counted)
		})
	}
	h2 := []struct {
		name    string
		fields  []field
		status  int // 0: the stream reset
		counted bool
	}{
		{"CONNECT", h2Fields(map[string]string{":method": "CONNECT", ":scheme": "", ":path": ""}), 501, true},
		// Go's server offers no extended CONNECT (unless
		// GODEBUG=http2xconnect=1, when the proxy answers it 501).
		{"extended CONNECT", h2Fields(map[string]string{":method": "CONNECT", ":protocol": "websocket", ":path": "/chat"}), 0, false},
		{"space in :path", h2Fields(map[string]string{":path": "/q?a=1 HTTP/1.1"}), 400, true},
		{"list in :authority", h2Fields(map[string]string{":authority": "a.example,b.example"}), 400, true},
		{"content-length not a number", h2Fields(map[string]string{":method": "POST"}, field{"content-length", "abc"}), 400, true},
		{"asterisk target of GET", h2Fields(map[string]string{":path": "*"}), 400, true},
		{"method not a token", h2Fields(map[string]string{":method": "GET /admin"}), 400, true},
		{"OPTIONS *", h2Fields(map[string]string{":method": "OPTIONS", ":path": "*"}), 200, false},
		{"upgrade", h2Fields(nil, field{"upgrade", "websocket"}), 400, false},
		{"connection", h2Fields(nil, field{"connection", "close"}), 400, false},
		{"te other than trailers", h2Fields(nil, field{"te", "chunked"}), 400, false},
		{"transfer-encoding", h2Fields(nil, field{"transfer-encoding", "chunked"}), 400, false},
		{"no :path", h2Fields(map[string]string{":path": ""}), 0, false},
		{"two :path", h2Fields(nil, field{":path", "/b"}), 0, false},
		{"userinfo in :authority", h2Fields(map[string]string{":authority": "user@app.example"}), 0, false},
		{"control byte in a value", h2Fields(nil, field{"x", "a\x01b"}), 0, false},
	}
	for _, tt := range h2 {
		t.Run("HTTP/2/"+tt.name, func(t *testing.T) {
			lb := startLineBackend(t)
			cfg := lineBackendConfig(t, lb)
			cert := newTestCert(t)
			cfg.TLS = &config.TLS{Cert: cert.certFile, Key: cert.keyFile}
			s, u, logs := startLoggedProxy(t, cfg)
			r := dialH2(t, u, cert).request(tt.fields, "")
			switch {
			case tt.status == 0 && !r.reset:
				t.Errorf("answer %+v, want the stream reset", r)
			case tt.status != 0 && (r.reset || r.status != tt.status):
				t.Errorf("answer %+v, want %d", r, tt.status)
			}
			checkRefusal(t, s, lb, logs, tt.counted)
		})
	}
}

// startLoggedProxy serves cfg with its access log observed, and returns
// the proxy's address.
func startLoggedProxy(t *testing.T, cfg *config.Config) (*Server, string, *observer.ObservedLogs) {
	t.Helper()
	cfg.Log.Access = true
	cfg.Server.MaxHeaderBytes = 8 << 10
	log, logs := observed()
	s, u := startProxy(t, cfg, log)
	return s, u.Host, logs
}

// checkRefusal checks that a refused request reached no backend, and was
// counted rejected and logged, or neither.
func checkRefusal(t *testing.T, s *Server, lb *lineBackend, logs *observer.ObservedLogs, counted bool) {
	t.Helper()
	if got := lb.parsed(); len(got) != 0 {
		t.Errorf("backend parsed %+v", got)
	}
	want := 0
	if counted {
		want = 1
	}
	if n := s.stats.rejected.Load(); n != uint64(want) {
		t.Errorf("affinity_requests_rejected_total %d, want %d", n, want)
	}
	if n := len(accessLines(logs)); n != want {
		t.Errorf("%d access log lines, want %d", n, want)
	}
}
