package proxy

import (
	"bufio"
	"bytes"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
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
