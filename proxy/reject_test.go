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

	"golang.org/x/net/http/httpguts"
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
