package h1

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/testutil"
)

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

// waitFor bounds the waits for what a test polls.
const waitFor = 5 * time.Second

// testConfig is a Config as the proxy's, with the given timeouts.
func testConfig(headerTimeout, idleTimeout time.Duration) Config {
	return Config{
		Dial:                  (&net.Dialer{Timeout: waitFor}).DialContext,
		ResponseHeaderTimeout: headerTimeout, IdleConnTimeout: idleTimeout,
		MaxIdleConns: 1024, MaxIdleConnsPerHost: 256,
	}
}

func newTestClient(headerTimeout, idleTimeout time.Duration) *Client {
	return New(testConfig(headerTimeout, idleTimeout))
}

// newTransport returns the http.Transport a Client is held to: made with
// the same Config, no proxy, and bodies passed through as they come, as
// the proxy makes its own.
func newTransport(cfg Config) *http.Transport {
	return &http.Transport{
		DialContext: cfg.Dial, ResponseHeaderTimeout: cfg.ResponseHeaderTimeout, IdleConnTimeout: cfg.IdleConnTimeout,
		MaxIdleConns: cfg.MaxIdleConns, MaxIdleConnsPerHost: cfg.MaxIdleConnsPerHost,
		TLSClientConfig: cfg.TLSClientConfig, TLSHandshakeTimeout: cfg.TLSHandshakeTimeout,
		ExpectContinueTimeout: cfg.ExpectContinueTimeout,
		DisableCompression:    true,
		// As the proxy's transport: the client's limit.
		MaxResponseHeaderBytes: MaxResponseHeaderBytes,
	}
}

// h1Get sends a request with method through c, reads the body and closes
// it; it fails the test on an error.
func h1Get(t *testing.T, c *Client, method, u string) (*http.Response, string) {
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

func TestHandles(t *testing.T) {
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
		{"POST without a body", http.MethodPost, "http://b:80/", nil, true},
		{"POST with a body", http.MethodPost, "http://b:80/", func(r *http.Request) {
			r.Body = io.NopCloser(strings.NewReader("x"))
			r.ContentLength = 1
		}, true},
		{"DELETE", http.MethodDelete, "http://b:80/", nil, true},
		{"GET with a body", http.MethodGet, "http://b:80/", func(r *http.Request) {
			r.Body = io.NopCloser(strings.NewReader("x"))
		}, true},
		{"https", http.MethodGet, "https://b:443/", nil, true},
		{"another scheme", http.MethodGet, "ftp://b:21/", nil, false},
		{"method not a token", http.MethodGet, "http://b:80/", func(r *http.Request) { r.Method = "BAD METHOD" }, false},
		{"CONNECT", http.MethodConnect, "http://b:80/", nil, false},
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
	c := newTestClient(0, 0)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := http.NewRequest(tt.method, tt.url, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tt.edit != nil {
				tt.edit(r)
			}
			if got := c.Handles(r); got != tt.want {
				t.Errorf("Handles = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestHostPort(t *testing.T) {
	for _, tt := range []struct {
		host  string
		https bool
		want  string
	}{
		{"b:8080", false, "b:8080"}, {"b", false, "b:80"}, {"[::1]:81", false, "[::1]:81"}, {"[::1]", false, "[::1]:80"},
		{"10.0.0.1", false, "10.0.0.1:80"}, {"b", true, "b:443"}, {"[::1]", true, "[::1]:443"}, {"b:8443", true, "b:8443"},
	} {
		if got := hostPort(tt.host, tt.https); got != tt.want {
			t.Errorf("hostPort(%q, https %v) = %q, want %q", tt.host, tt.https, got, tt.want)
		}
	}
}

// TestWritesWhatTransportWrites: the bytes a backend receives are those
// http.Transport, configured as the proxy's, sends for the same request:
// a GET, and requests with bodies of known and of unknown length, with
// trailers, and announced with "Expect: 100-continue".
func TestWritesWhatTransportWrites(t *testing.T) {
	got := make(chan string, 2)
	rb := testutil.StartRaw(t, func(c net.Conn, br *bufio.Reader) {
		var raw strings.Builder
		req, err := http.ReadRequest(bufio.NewReader(io.TeeReader(br, &raw)))
		if err != nil {
			return
		}
		if req.Header.Get("Expect") != "" {
			_, _ = io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
		}
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			return
		}
		got <- raw.String()
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	tests := []struct {
		name   string
		method string
		body   func() io.Reader
		edit   func(r *http.Request)
	}{
		{"GET", http.MethodGet, nil, nil},
		{"POST of known length", http.MethodPost, func() io.Reader { return strings.NewReader("a=1&b=2") }, nil},
		{"PUT of unknown length", http.MethodPut, func() io.Reader { return io.MultiReader(strings.NewReader("chunk")) }, nil},
		{"PUT with trailers", http.MethodPut, func() io.Reader { return io.MultiReader(strings.NewReader("chunk")) },
			func(r *http.Request) { r.Trailer = http.Header{"X-Sum": {"5"}} }},
		{"POST expecting 100-continue", http.MethodPost, func() io.Reader { return strings.NewReader("a=1") },
			func(r *http.Request) { r.Header.Set("Expect", "100-continue") }},
		{"DELETE without a body", http.MethodDelete, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			newReq := func() *http.Request {
				var body io.Reader
				if tt.body != nil {
					body = tt.body()
				}
				r, err := http.NewRequest(tt.method, rb.URL()+"a%20b?x=1&y", body)
				if err != nil {
					t.Fatal(err)
				}
				r.GetBody = nil
				r.Host = "site.example"
				r.Header.Set("User-Agent", "")
				r.Header.Set("X-Forwarded-For", "192.0.2.1")
				r.Header.Add("Cookie", "a=1")
				r.Header.Add("Cookie", "b=2")
				r.Header.Set("Accept", "*/*")
				if tt.edit != nil {
					tt.edit(r)
				}
				return r
			}
			cfg := testConfig(time.Second, 0)
			cfg.ExpectContinueTimeout = time.Hour // the body goes on the 100 alone
			tr := newTransport(cfg)
			defer tr.CloseIdleConnections()
			c := New(cfg)
			defer c.CloseIdleConnections()
			for _, rt := range []http.RoundTripper{tr, c} {
				res, err := rt.RoundTrip(newReq())
				if err != nil {
					t.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, res.Body)
				_ = res.Body.Close()
			}
			if want, h1 := <-got, <-got; h1 != want {
				t.Errorf("Client sent\n%q\nhttp.Transport sends\n%q", h1, want)
			}
		})
	}
}

// TestKeepAlive: a connection serves the next request only when both
// sides allow it and its response was read to the end.
func TestKeepAlive(t *testing.T) {
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
		// RFC 9112 §6.3: read as chunked, and closed after; http.Transport
		// keeps it.
		{"length and chunked", http.MethodGet, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", false, "ok", 2},
		{"chunked and length", http.MethodGet, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\ncontent-length: 100\r\n\r\n2\r\nok\r\n0\r\n\r\n", false, "ok", 2},
		{"bytes after the response", http.MethodGet, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1", false, "ok", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rb := testutil.StartRaw(t, answering(tt.response, tt.hangUp))
			c := newTestClient(time.Second, 0)
			defer c.CloseIdleConnections()
			for i := range 2 {
				if _, body := h1Get(t, c, tt.method, rb.URL()); body != tt.body {
					t.Fatalf("request %d: body %q, want %q", i+1, body, tt.body)
				}
			}
			if n := rb.Accepted(); n != tt.conns {
				t.Errorf("two requests took %d connections, want %d", n, tt.conns)
			}
		})
	}
}

// TestBodyLeftUnread: a body closed before its end takes its connection
// with it.
func TestBodyLeftUnread(t *testing.T) {
	rb := testutil.StartRaw(t, answering("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789", false))
	c := newTestClient(time.Second, 0)
	defer c.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodGet, rb.URL(), nil)
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
	h1Get(t, c, http.MethodGet, rb.URL())
	if n := rb.Accepted(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

// TestStaleConnection: an idle connection the backend has closed is
// dropped before anything is written on it, and the request goes on a new
// one; a connection that fails once the request was written is not tried
// again, new or reused: the request was sent once, and the retrier decides
// what follows.
func TestStaleConnection(t *testing.T) {
	t.Run("idle connection closed by the backend", func(t *testing.T) {
		// Each connection answers once, as if keep-alive, then closes.
		rb := testutil.StartRaw(t, answering("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true))
		c := newTestClient(time.Second, 0)
		defer c.CloseIdleConnections()
		h1Get(t, c, http.MethodGet, rb.URL())
		testutil.Eventually(t, waitFor, "backend closed its connection", func() bool { return rb.Closed() == 1 })
		if _, body := h1Get(t, c, http.MethodGet, rb.URL()); body != "ok" {
			t.Errorf("body %q after a stale connection", body)
		}
		if n := rb.Accepted(); n != 2 {
			t.Errorf("%d connections, want 2", n)
		}
	})
	t.Run("reused connection closed after the request", func(t *testing.T) {
		var seen atomic.Int32
		rb := testutil.StartRaw(t, func(c net.Conn, br *bufio.Reader) {
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
		c := newTestClient(time.Second, 0)
		defer c.CloseIdleConnections()
		h1Get(t, c, http.MethodGet, rb.URL())
		req, _ := http.NewRequest(http.MethodGet, rb.URL(), nil)
		if _, err := c.RoundTrip(req); err == nil {
			t.Fatal("no error from a connection closed before the response")
		}
		if n, conns := seen.Load(), rb.Accepted(); n != 2 || conns != 1 {
			t.Errorf("backend saw %d requests on %d connections, want 2 on 1: the second sent once", n, conns)
		}
	})
	t.Run("new connection closed", func(t *testing.T) {
		rb := testutil.StartRaw(t, func(net.Conn, *bufio.Reader) {})
		c := newTestClient(time.Second, 0)
		req, _ := http.NewRequest(http.MethodGet, rb.URL(), nil)
		if _, err := c.RoundTrip(req); err == nil {
			t.Fatal("no error from a backend that hangs up")
		}
		if n := rb.Accepted(); n != 1 {
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

func TestResponseHeaderTimeout(t *testing.T) {
	got := make(chan struct{}, 1)
	rb := testutil.StartRaw(t, hanging(got))
	c := newTestClient(50*time.Millisecond, 0)
	req, _ := http.NewRequest(http.MethodGet, rb.URL(), nil)
	_, err := c.RoundTrip(req)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("error %v, want a timeout", err)
	}
	testutil.Eventually(t, waitFor, "timed-out connection closed", func() bool { return rb.Closed() == 1 })
}

func TestResponseHeaderLimit(t *testing.T) {
	big := "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", 2048) + "\r\nContent-Length: 2\r\n\r\nok"
	rb := testutil.StartRaw(t, answering(big, false))
	c := newTestClient(time.Second, 0)
	c.maxHeader = 1024
	req, _ := http.NewRequest(http.MethodGet, rb.URL(), nil)
	if _, err := c.RoundTrip(req); !errors.Is(err, errHeaderTooLarge) {
		t.Errorf("error %v, want %v", err, errHeaderTooLarge)
	}
}

// TestInformational: 1xx responses reach the request's ClientTrace, as
// ReverseProxy relays them, before the final response.
func TestInformational(t *testing.T) {
	rb := testutil.StartRaw(t, answering("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"+
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false))
	c := newTestClient(time.Second, 0)
	defer c.CloseIdleConnections()
	var hints []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		hints = append(hints, h.Get("Link"))
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, rb.URL(), nil)
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

// TestCancel: the client leaving ends the wait for the backend, and the
// read of a body, with the context's error.
func TestCancel(t *testing.T) {
	t.Run("awaiting headers", func(t *testing.T) {
		got := make(chan struct{}, 1)
		rb := testutil.StartRaw(t, hanging(got))
		c := newTestClient(0, 0)
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			<-got
			cancel()
		}()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, rb.URL(), nil)
		if _, err := c.RoundTrip(req); !errors.Is(err, context.Canceled) {
			t.Errorf("error %v, want %v", err, context.Canceled)
		}
	})
	t.Run("reading the body", func(t *testing.T) {
		rb := testutil.StartRaw(t, func(c net.Conn, br *bufio.Reader) {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
			_, _ = br.ReadByte()
		})
		c := newTestClient(time.Second, 0)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, rb.URL(), nil)
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

// TestIdleConnections: idle connections close after the idle timeout,
// and all at once on CloseIdleConnections.
func TestIdleConnections(t *testing.T) {
	const ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	t.Run("timeout", func(t *testing.T) {
		rb := testutil.StartRaw(t, answering(ok, false))
		c := newTestClient(time.Second, 50*time.Millisecond)
		defer c.CloseIdleConnections()
		h1Get(t, c, http.MethodGet, rb.URL())
		testutil.Eventually(t, waitFor, "idle connection closed", func() bool { return rb.Closed() == 1 })
		h1Get(t, c, http.MethodGet, rb.URL())
		if n := rb.Accepted(); n != 2 {
			t.Errorf("%d connections, want 2", n)
		}
	})
	t.Run("close idle", func(t *testing.T) {
		rb := testutil.StartRaw(t, answering(ok, false))
		c := newTestClient(time.Second, time.Hour)
		h1Get(t, c, http.MethodGet, rb.URL())
		c.CloseIdleConnections()
		testutil.Eventually(t, waitFor, "idle connection closed", func() bool { return rb.Closed() == 1 })
	})
	// Close closes the idle connection, and the busy one as its response
	// ends, where CloseIdleConnections leaves it idle.
	t.Run("close", func(t *testing.T) {
		rb := testutil.StartRaw(t, answering(ok, false))
		c := newTestClient(time.Second, time.Hour)
		req, _ := http.NewRequest(http.MethodGet, rb.URL(), nil)
		busy, err := c.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		h1Get(t, c, http.MethodGet, rb.URL())
		c.Close()
		testutil.Eventually(t, waitFor, "idle connection closed", func() bool { return rb.Closed() == 1 })
		if _, err := io.ReadAll(busy.Body); err != nil {
			t.Fatal(err)
		}
		_ = busy.Body.Close()
		testutil.Eventually(t, waitFor, "connection given back after Close closed", func() bool { return rb.Closed() == 2 })
		if n := rb.Accepted(); n != 2 {
			t.Errorf("%d connections, want 2", n)
		}
	})
}

// TestInformationalCap: a backend may send max1xxResponses interim
// responses before its final one, each relayed through the trace; one more
// and the request fails, so that a backend looping on 103s has no more of
// them relayed to the client.
func TestInformationalCap(t *testing.T) {
	hint := "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
	final := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	for _, tc := range []struct {
		hints int
		fail  bool
	}{{1, false}, {max1xxResponses, false}, {max1xxResponses + 1, true}, {100, true}} {
		t.Run(strconv.Itoa(tc.hints), func(t *testing.T) {
			rb := testutil.StartRaw(t, answering(strings.Repeat(hint, tc.hints)+final, false))
			c := newTestClient(waitFor, 0)
			defer c.CloseIdleConnections()
			relayed := 0
			trace := &httptrace.ClientTrace{Got1xxResponse: func(int, textproto.MIMEHeader) error {
				relayed++
				return nil
			}}
			req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, rb.URL(), nil)
			res, err := c.RoundTrip(req)
			if tc.fail {
				if !errors.Is(err, errTooMany1xx) || relayed != max1xxResponses {
					t.Fatalf("error %v after %d relayed; want %v after %d", err, relayed, errTooMany1xx, max1xxResponses)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			_ = res.Body.Close()
			if res.StatusCode != http.StatusOK || string(body) != "ok" || relayed != tc.hints {
				t.Errorf("got %d %q after %d relayed; want 200 \"ok\" after %d", res.StatusCode, body, relayed, tc.hints)
			}
		})
	}
}

// TestInformationalTrickle: ResponseHeaderTimeout bounds the whole head,
// the interim responses before it included, in both clients: a backend
// that sends a 102 every few milliseconds, and never its final response,
// times out the request as one that sends nothing does. The trace asks for
// every interim response, as ReverseProxy's does; the cap of the Client is
// set out of reach, so that only the timeout can end the wait.
func TestInformationalTrickle(t *testing.T) {
	trickle := func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		// Bounded: a client that never times out fails the test
		// when this ends, not by hanging it.
		for end := time.Now().Add(2 * waitFor); time.Now().Before(end); {
			if _, err := io.WriteString(c, "HTTP/1.1 102 Processing\r\n\r\n"); err != nil {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	}
	cfg := testConfig(200*time.Millisecond, 0)
	hc := New(cfg)
	hc.max1xx = math.MaxInt
	for _, rt := range []struct {
		name string
		rt   http.RoundTripper
	}{{"Client", hc}, {"http.Transport", newTransport(cfg)}} {
		t.Run(rt.name, func(t *testing.T) {
			rb := testutil.StartRaw(t, trickle)
			trace := &httptrace.ClientTrace{Got1xxResponse: func(int, textproto.MIMEHeader) error { return nil }}
			req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, rb.URL(), nil)
			res, err := rt.rt.RoundTrip(req)
			if err == nil {
				_ = res.Body.Close()
			}
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatalf("error %v, want a timeout", err)
			}
		})
	}
}

// TestWary: once a host sent bytes no request asked for, each of its
// connections serves one request until WaryPeriod has passed, and
// Unsolicited hears of it, first once and then as a renewal.
func TestWary(t *testing.T) {
	const ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	tests := []struct {
		name   string
		first  string // the answer to the first request
		hangUp bool
		conns  int32 // connections four requests take
		heard  []bool
	}{
		{"well behaved", ok, false, 1, nil},
		{"bytes after the response", ok + "HTTP/1.1 200 OK\r\n", false, 4, []bool{true}},
		{"backend closes", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", true, 2, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var n atomic.Int32
			rb := testutil.StartRaw(t, func(c net.Conn, br *bufio.Reader) {
				for {
					if _, err := http.ReadRequest(br); err != nil {
						return
					}
					raw := ok
					if n.Add(1) == 1 {
						raw = tt.first
					}
					if _, err := io.WriteString(c, raw); err != nil || (raw == tt.first && tt.hangUp) {
						return
					}
				}
			})
			var heard []bool
			cfg := testConfig(time.Second, 0)
			cfg.Unsolicited = func(addr string, first bool) {
				if addr != rb.Addr() {
					t.Errorf("heard of %s, want %s", addr, rb.Addr())
				}
				heard = append(heard, first)
			}
			c := New(cfg)
			defer c.CloseIdleConnections()
			for range 4 {
				h1Get(t, c, http.MethodGet, rb.URL())
			}
			if got := rb.Accepted(); got != tt.conns {
				t.Errorf("four requests took %d connections, want %d", got, tt.conns)
			}
			if fmt.Sprint(heard) != fmt.Sprint(tt.heard) {
				t.Errorf("Unsolicited heard %v, want %v", heard, tt.heard)
			}
		})
	}
}
