package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/testutil"
)

// rawBackend is an HTTP backend written by hand, for responses net/http
// would not send. Each connection it accepts is given to serve in a
// goroutine of its own; the test's cleanup closes the listener and every
// connection, and waits for those goroutines.
type rawBackend struct {
	ln       net.Listener
	accepted atomic.Int32
	closed   atomic.Int32 // connections serve returned from
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    []net.Conn
}

func startRaw(t *testing.T, serve func(c net.Conn, br *bufio.Reader)) *rawBackend {
	t.Helper()
	rb := &rawBackend{ln: testutil.Listen(t)}
	rb.wg.Go(func() {
		for {
			c, err := rb.ln.Accept()
			if err != nil {
				return
			}
			rb.accepted.Add(1)
			rb.mu.Lock()
			rb.conns = append(rb.conns, c)
			rb.mu.Unlock()
			rb.wg.Go(func() {
				defer rb.closed.Add(1)
				defer c.Close()
				serve(c, bufio.NewReader(c))
			})
		}
	})
	t.Cleanup(func() {
		_ = rb.ln.Close()
		rb.mu.Lock()
		for _, c := range rb.conns {
			_ = c.Close()
		}
		rb.mu.Unlock()
		rb.wg.Wait()
	})
	return rb
}

func (rb *rawBackend) url() string { return "http://" + rb.ln.Addr().String() + "/" }

// answering returns a serve function answering every request on a
// connection with raw, and closing the connection after it when hangUp is
// set.
func answering(raw string, hangUp bool) func(net.Conn, *bufio.Reader) {
	return func(c net.Conn, br *bufio.Reader) {
		for {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			if _, err := io.WriteString(c, raw); err != nil || hangUp {
				return
			}
		}
	}
}

func newTestH1(headerTimeout, idleTimeout time.Duration) *h1Client {
	return newH1Client((&net.Dialer{Timeout: time.Second}).DialContext, headerTimeout, idleTimeout)
}

// h1Get sends a request with method through c, reads the body and closes
// it; it fails the test on an error.
func h1Get(t *testing.T, c *h1Client, method, u string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: body: %v", method, u, err)
	}
	if err := res.Body.Close(); err != nil {
		t.Fatal(err)
	}
	return res, string(body)
}

func TestH1Handles(t *testing.T) {
	tests := []struct {
		name   string
		method string
		url    string
		edit   func(r *http.Request)
		want   bool
	}{
		{"GET", http.MethodGet, "http://b:80/x?q=1", nil, true},
		{"HEAD", http.MethodHead, "http://b:80/", nil, true},
		{"OPTIONS", http.MethodOptions, "http://b:80/", nil, true},
		{"POST without a body", http.MethodPost, "http://b:80/", nil, false},
		{"DELETE", http.MethodDelete, "http://b:80/", nil, false},
		{"GET with a body", http.MethodGet, "http://b:80/", func(r *http.Request) {
			r.Body = io.NopCloser(strings.NewReader("x"))
		}, false},
		{"https", http.MethodGet, "https://b:443/", nil, false},
		{"protocol switch", http.MethodGet, "http://b:80/", func(r *http.Request) {
			r.Header.Set("Connection", "Upgrade")
			r.Header.Set("Upgrade", "websocket")
		}, false},
		{"close", http.MethodGet, "http://b:80/", func(r *http.Request) { r.Close = true }, false},
		{"header name not a token", http.MethodGet, "http://b:80/", func(r *http.Request) {
			r.Header["Bad Name"] = []string{"v"}
		}, false},
		{"control character in a value", http.MethodGet, "http://b:80/", func(r *http.Request) {
			r.Header["X-V"] = []string{"a\r\nb"}
		}, false},
		{"tab in a value", http.MethodGet, "http://b:80/", func(r *http.Request) {
			r.Header["X-V"] = []string{"a\tb"}
		}, true},
		{"host not ASCII", http.MethodGet, "http://bü:80/", nil, false},
	}
	c := newTestH1(0, 0)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := http.NewRequest(tt.method, tt.url, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tt.edit != nil {
				tt.edit(r)
			}
			if got := c.handles(r); got != tt.want {
				t.Errorf("handles = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestHostPort(t *testing.T) {
	for in, want := range map[string]string{
		"b:8080": "b:8080", "b": "b:80", "[::1]:81": "[::1]:81", "[::1]": "[::1]:80", "10.0.0.1": "10.0.0.1:80",
	} {
		if got := hostPort(in); got != want {
			t.Errorf("hostPort(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestH1WritesWhatTransportWrites: the bytes a backend receives are those
// http.Transport, configured as the proxy's, sends for the same request.
func TestH1WritesWhatTransportWrites(t *testing.T) {
	got := make(chan string, 2)
	rb := startRaw(t, func(c net.Conn, br *bufio.Reader) {
		var head strings.Builder
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			head.WriteString(line)
			if line == "\r\n" {
				break
			}
		}
		got <- head.String()
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	newReq := func() *http.Request {
		r, err := http.NewRequest(http.MethodGet, rb.url()+"a%20b?x=1&y", nil)
		if err != nil {
			t.Fatal(err)
		}
		r.Host = "site.example"
		r.Header.Set("User-Agent", "")
		r.Header.Set("X-Forwarded-For", "192.0.2.1")
		r.Header.Add("Cookie", "a=1")
		r.Header.Add("Cookie", "b=2")
		r.Header.Set("Accept", "*/*")
		return r
	}
	tr := newTransport(testTimeouts)
	defer tr.CloseIdleConnections()
	for _, rt := range []http.RoundTripper{tr, newTestH1(time.Second, 0)} {
		res, err := rt.RoundTrip(newReq())
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		_ = res.Body.Close()
	}
	if want, h1 := <-got, <-got; h1 != want {
		t.Errorf("h1Client sent\n%q\nhttp.Transport sends\n%q", h1, want)
	}
}

// TestH1KeepAlive: a connection serves the next request only when both
// sides allow it and its response was read to the end.
func TestH1KeepAlive(t *testing.T) {
	tests := []struct {
		name     string
		method   string
		response string
		hangUp   bool // the backend closes after the response
		body     string
		conns    int32 // connections two requests take
	}{
		{"content-length", http.MethodGet, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false, "ok", 1},
		{"chunked", http.MethodGet, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", false, "ok", 1},
		{"no content", http.MethodGet, "HTTP/1.1 204 No Content\r\n\r\n", false, "", 1},
		{"head", http.MethodHead, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", false, "", 1},
		{"connection close", http.MethodGet, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", true, "ok", 2},
		{"HTTP/1.0", http.MethodGet, "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", true, "ok", 2},
		{"body until close", http.MethodGet, "HTTP/1.1 200 OK\r\n\r\nok", true, "ok", 2},
		{"bytes after the response", http.MethodGet, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1", false, "ok", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rb := startRaw(t, answering(tt.response, tt.hangUp))
			c := newTestH1(time.Second, 0)
			defer c.CloseIdleConnections()
			for i := range 2 {
				if _, body := h1Get(t, c, tt.method, rb.url()); body != tt.body {
					t.Fatalf("request %d: body %q, want %q", i+1, body, tt.body)
				}
			}
			if n := rb.accepted.Load(); n != tt.conns {
				t.Errorf("two requests took %d connections, want %d", n, tt.conns)
			}
		})
	}
}

// TestH1BodyLeftUnread: a body closed before its end takes its connection
// with it.
func TestH1BodyLeftUnread(t *testing.T) {
	rb := startRaw(t, answering("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789", false))
	c := newTestH1(time.Second, 0)
	defer c.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodGet, rb.url(), nil)
	res, err := c.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := res.Body.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	_ = res.Body.Close()
	if _, err := res.Body.Read(make([]byte, 1)); !errors.Is(err, errBodyReadClosed) {
		t.Errorf("read after close: %v, want %v", err, errBodyReadClosed)
	}
	h1Get(t, c, http.MethodGet, rb.url())
	if n := rb.accepted.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

// TestH1StaleConnection: an idle connection the backend has closed is
// dropped before anything is written on it, and the request goes on a new
// one; a connection that fails once the request was written is not tried
// again, new or reused: the request was sent once, and the retrier decides
// what follows.
func TestH1StaleConnection(t *testing.T) {
	t.Run("idle connection closed by the backend", func(t *testing.T) {
		// Each connection answers once, as if keep-alive, then closes.
		rb := startRaw(t, answering("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true))
		c := newTestH1(time.Second, 0)
		defer c.CloseIdleConnections()
		h1Get(t, c, http.MethodGet, rb.url())
		testutil.Eventually(t, waitFor, "backend closed its connection", func() bool { return rb.closed.Load() == 1 })
		if _, body := h1Get(t, c, http.MethodGet, rb.url()); body != "ok" {
			t.Errorf("body %q after a stale connection", body)
		}
		if n := rb.accepted.Load(); n != 2 {
			t.Errorf("%d connections, want 2", n)
		}
	})
	t.Run("reused connection closed after the request", func(t *testing.T) {
		var seen atomic.Int32
		rb := startRaw(t, func(c net.Conn, br *bufio.Reader) {
			for i := 0; ; i++ {
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				seen.Add(1)
				if i > 0 {
					return // read, then closed unanswered
				}
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}
		})
		c := newTestH1(time.Second, 0)
		defer c.CloseIdleConnections()
		h1Get(t, c, http.MethodGet, rb.url())
		req, _ := http.NewRequest(http.MethodGet, rb.url(), nil)
		if _, err := c.RoundTrip(req); err == nil {
			t.Fatal("no error from a connection closed before the response")
		}
		if n, conns := seen.Load(), rb.accepted.Load(); n != 2 || conns != 1 {
			t.Errorf("backend saw %d requests on %d connections, want 2 on 1: the second sent once", n, conns)
		}
	})
	t.Run("new connection closed", func(t *testing.T) {
		rb := startRaw(t, func(net.Conn, *bufio.Reader) {})
		c := newTestH1(time.Second, 0)
		req, _ := http.NewRequest(http.MethodGet, rb.url(), nil)
		if _, err := c.RoundTrip(req); err == nil {
			t.Fatal("no error from a backend that hangs up")
		}
		if n := rb.accepted.Load(); n != 1 {
			t.Errorf("%d connections, want 1: a new connection's failure is the backend's", n)
		}
	})
}

// hanging returns a serve function that reads a request, reports it on
// got, and answers nothing until the connection closes.
func hanging(got chan<- struct{}) func(net.Conn, *bufio.Reader) {
	return func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		got <- struct{}{}
		_, _ = br.ReadByte() // until the proxy or the test closes it
	}
}

func TestH1ResponseHeaderTimeout(t *testing.T) {
	got := make(chan struct{}, 1)
	rb := startRaw(t, hanging(got))
	c := newTestH1(50*time.Millisecond, 0)
	req, _ := http.NewRequest(http.MethodGet, rb.url(), nil)
	_, err := c.RoundTrip(req)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !isTimeout(err) {
		t.Fatalf("error %v, want a timeout", err)
	}
	testutil.Eventually(t, waitFor, "timed-out connection closed", func() bool { return rb.closed.Load() == 1 })
}

func TestH1ResponseHeaderLimit(t *testing.T) {
	big := "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", 2048) + "\r\nContent-Length: 2\r\n\r\nok"
	rb := startRaw(t, answering(big, false))
	c := newTestH1(time.Second, 0)
	c.maxHeader = 1024
	req, _ := http.NewRequest(http.MethodGet, rb.url(), nil)
	if _, err := c.RoundTrip(req); !errors.Is(err, errHeaderTooLarge) {
		t.Errorf("error %v, want %v", err, errHeaderTooLarge)
	}
}

// TestH1Informational: 1xx responses reach the request's ClientTrace, as
// ReverseProxy relays them, before the final response.
func TestH1Informational(t *testing.T) {
	rb := startRaw(t, answering("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"+
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false))
	c := newTestH1(time.Second, 0)
	defer c.CloseIdleConnections()
	var hints []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		hints = append(hints, h.Get("Link"))
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, rb.url(), nil)
	res, err := c.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	_ = res.Body.Close()
	if res.StatusCode != http.StatusOK || string(body) != "ok" || len(hints) != 1 || hints[0] != "</a.css>; rel=preload" {
		t.Errorf("got %d %q after hints %q; want 200 \"ok\" after one", res.StatusCode, body, hints)
	}
}

// TestH1Cancel: the client leaving ends the wait for the backend, and the
// read of a body, with the context's error.
func TestH1Cancel(t *testing.T) {
	t.Run("awaiting headers", func(t *testing.T) {
		got := make(chan struct{}, 1)
		rb := startRaw(t, hanging(got))
		c := newTestH1(0, 0)
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			<-got
			cancel()
		}()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, rb.url(), nil)
		if _, err := c.RoundTrip(req); !errors.Is(err, context.Canceled) {
			t.Errorf("error %v, want %v", err, context.Canceled)
		}
	})
	t.Run("reading the body", func(t *testing.T) {
		rb := startRaw(t, func(c net.Conn, br *bufio.Reader) {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
			_, _ = br.ReadByte()
		})
		c := newTestH1(time.Second, 0)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, rb.url(), nil)
		res, err := c.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		if _, err := io.ReadFull(res.Body, make([]byte, 5)); err != nil {
			t.Fatal(err)
		}
		cancel()
		if _, err := res.Body.Read(make([]byte, 5)); !errors.Is(err, context.Canceled) {
			t.Errorf("read error %v, want %v", err, context.Canceled)
		}
	})
}

// TestH1IdleConnections: idle connections close after the idle timeout,
// and all at once on CloseIdleConnections.
func TestH1IdleConnections(t *testing.T) {
	const ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	t.Run("timeout", func(t *testing.T) {
		rb := startRaw(t, answering(ok, false))
		c := newTestH1(time.Second, 50*time.Millisecond)
		defer c.CloseIdleConnections()
		h1Get(t, c, http.MethodGet, rb.url())
		testutil.Eventually(t, waitFor, "idle connection closed", func() bool { return rb.closed.Load() == 1 })
		h1Get(t, c, http.MethodGet, rb.url())
		if n := rb.accepted.Load(); n != 2 {
			t.Errorf("%d connections, want 2", n)
		}
	})
	t.Run("close idle", func(t *testing.T) {
		rb := startRaw(t, answering(ok, false))
		c := newTestH1(time.Second, time.Hour)
		h1Get(t, c, http.MethodGet, rb.url())
		c.CloseIdleConnections()
		testutil.Eventually(t, waitFor, "idle connection closed", func() bool { return rb.closed.Load() == 1 })
	})
}

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
			return // h1Client.handles sends these to http.Transport
		}
		if fast, took, want := headOf(t, r); took && fast != want {
			t.Errorf("writeHead wrote\n%q\nRequest.Write writes\n%q", fast, want)
		}
	})
}

// loopbackPair returns both ends of a TCP connection on loopback.
func loopbackPair(t testing.TB) (client, server net.Conn) {
	t.Helper()
	ln := testutil.Listen(t)
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			c = nil
		}
		accepted <- c
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() {
		_ = client.Close()
		_ = server.Close()
	})
	return client, server
}

// TestIdlePeek: quiet reports a connection nothing arrived on, and leaves
// what did arrive to be read.
func TestIdlePeek(t *testing.T) {
	client, server := loopbackPair(t)
	var p idlePeek
	p.init(client)
	if !p.quiet() {
		t.Fatal("a connection nothing arrived on is not quiet")
	}
	if _, err := io.WriteString(server, "x"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, waitFor, "a byte arrived", func() bool { return !p.quiet() })
	b := make([]byte, 2)
	if n, err := client.Read(b); n != 1 || b[0] != 'x' || err != nil {
		t.Fatalf("read %q, %v after the check; want the byte it left", b[:n], err)
	}
	if !p.quiet() {
		t.Fatal("not quiet once the byte was read")
	}
	_ = server.Close()
	testutil.Eventually(t, waitFor, "the close noticed", func() bool { return !p.quiet() })

	c1, _ := net.Pipe()
	defer c1.Close()
	var pipe idlePeek
	pipe.init(c1)
	if pipe.quiet() {
		t.Error("a connection without a socket to ask is quiet")
	}
	_ = client.Close()
	if p.quiet() {
		t.Error("a closed connection is quiet")
	}
}

// BenchmarkIdlePeek is what h1Client pays to check an idle connection
// before it reuses it, a recv that finds nothing.
func BenchmarkIdlePeek(b *testing.B) {
	client, _ := loopbackPair(b)
	var p idlePeek
	p.init(client)
	b.ReportAllocs()
	for b.Loop() {
		if !p.quiet() {
			b.Fatal("not quiet")
		}
	}
}
