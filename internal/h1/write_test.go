package h1

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"testing"
)

// headOf returns what writeHead writes for r and whether it took it, and
// what Request.Write writes.
func headOf(t testing.TB, r *http.Request) (fast string, took bool, want string) {
	t.Helper()
	var b, w bytes.Buffer
	bw := bufio.NewWriter(&b)
	took = writeHead(bw, r, nil)
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
	if !took && b.Len() > 0 {
		t.Fatalf("writeHead declined %v but wrote %q", r.URL, b.String())
	}
	if err := r.Write(&w); err != nil {
		return b.String(), took, "error: " + err.Error()
	}
	return b.String(), took, w.String()
}

// writeHead writes what Request.Write writes, or declines and writes
// nothing; the requests ReverseProxy makes of an ordinary GET it takes.
func TestWriteHead(t *testing.T) {
	req := func(method, target string, edit func(*http.Request)) *http.Request {
		r, err := http.NewRequest(method, target, nil)
		if err != nil {
			t.Fatal(err)
		}
		r.Header.Set("User-Agent", "")
		r.Header.Set("X-Forwarded-For", "192.0.2.1")
		r.Header["Cookie"] = []string{"a=1", "b=2"}
		if edit != nil {
			edit(r)
		}
		return r
	}
	tests := []struct {
		name string
		r    *http.Request
		take bool
	}{
		{"get", req("GET", "http://10.0.0.1:8080/a%20b?x=1&y", nil), true},
		{"head", req("HEAD", "http://10.0.0.1:8080/", nil), true},
		{"host header", req("GET", "http://10.0.0.1:8080/p", func(r *http.Request) { r.Host = "site.example" }), true},
		{"ipv6 host", req("GET", "http://[::1]:8080/p", nil), true},
		{"user agent", req("GET", "http://h/p", func(r *http.Request) { r.Header.Set("User-Agent", "curl/8.0") }), true},
		{"user agent to trim", req("GET", "http://h/p", func(r *http.Request) { r.Header["User-Agent"] = []string{"  ua  "} }), true},
		{"user agent of spaces", req("GET", "http://h/p", func(r *http.Request) { r.Header["User-Agent"] = []string{"   "} }), true},
		{"empty user agent list", req("GET", "http://h/p", func(r *http.Request) { r.Header["User-Agent"] = nil }), true},
		{"excluded headers", req("GET", "http://h/p", func(r *http.Request) {
			r.Header.Set("Content-Length", "5")
			r.Header.Set("Transfer-Encoding", "chunked")
			r.Header.Set("Trailer", "X")
			r.Header.Set("Host", "other")
		}), true},
		{"opaque url", req("GET", "http://h/p", func(r *http.Request) { r.URL.Opaque = "//h/raw%2Fpath" }), true},
		{"values to trim and empty ones", req("GET", "http://h/p", func(r *http.Request) {
			r.Header["X-Pad"] = []string{"  a b \t", "\tc", ""}
			r.Header["X-None"] = nil
			r.Header["x-lower"] = []string{"v"}
		}), true},
		{"more headers than the stack holds, unsorted", req("GET", "http://h/p", func(r *http.Request) {
			for i := range 40 {
				r.Header[fmt.Sprintf("X-%c%d", 'z'-i%26, i)] = []string{strconv.Itoa(i), "again"}
			}
		}), true},
		{"no user agent key", req("GET", "http://h/p", func(r *http.Request) { delete(r.Header, "User-Agent") }), false},
		{"options", req("OPTIONS", "http://h/p", nil), false},
		{"content length", req("GET", "http://h/p", func(r *http.Request) { r.ContentLength = 3 }), false},
		{"non-ascii host", req("GET", "http://h/p", func(r *http.Request) { r.Host = "bücher.example" }), false},
		{"invalid host", req("GET", "http://h/p", func(r *http.Request) { r.Host = "a b" }), false},
		{"zone", req("GET", "http://h/p", func(r *http.Request) { r.Host = "[fe80::1%25eth0]:80" }), false},
		{"control in url", req("GET", "http://h/p", func(r *http.Request) { r.URL.RawQuery = "a=\x01" }), false},
		{"newline in user agent", req("GET", "http://h/p", func(r *http.Request) { r.Header["User-Agent"] = []string{"a\nb"} }), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fast, took, want := headOf(t, tt.r)
			if took != tt.take {
				t.Fatalf("writeHead took it: %v, want %v", took, tt.take)
			}
			if took && fast != want {
				t.Errorf("writeHead wrote\n%q\nRequest.Write writes\n%q", fast, want)
			}
		})
	}
}

// FuzzWriteHead: whatever the request, writeHead writes what Request.Write
// writes or nothing.
func FuzzWriteHead(f *testing.F) {
	f.Add("GET", "site.example", "/a%20b?x=1", "curl/8", "X-Key", "v")
	f.Add("HEAD", "[::1]:80", "/", " ", "Cookie", "a=1; b=2")
	f.Add("GET", "h\r\nx", "/p\x7f", "a\rb", "Bad Key", "\x00")
	f.Fuzz(func(t *testing.T, method, host, uri, ua, key, value string) {
		u, err := url.ParseRequestURI(uri)
		if err != nil {
			return
		}
		u.Scheme, u.Host = "http", "10.0.0.1:80"
		r := &http.Request{Method: method, URL: u, Host: host, Header: http.Header{"User-Agent": {ua}}}
		r.Header[key] = []string{value}
		if !validHeaders(r.Header) {
			return // Client.Handles sends these to http.Transport
		}
		if fast, took, want := headOf(t, r); took && fast != want {
			t.Errorf("writeHead wrote\n%q\nRequest.Write writes\n%q", fast, want)
		}
	})
}
