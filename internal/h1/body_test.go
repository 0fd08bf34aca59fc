package h1

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/testutil"
)

// watchedBody is a request body read from a pipe the test writes, which
// records whether it was closed.
type watchedBody struct {
	*io.PipeReader
	closed atomic.Bool
}

func (b *watchedBody) Close() error {
	b.closed.Store(true)
	return b.PipeReader.Close()
}

// pipeRequest returns a request to u with method whose body, of unknown
// length, is what the test writes to the returned writer.
func pipeRequest(t *testing.T, ctx context.Context, method, u string) (*http.Request, *watchedBody, *io.PipeWriter) {
	t.Helper()
	pr, pw := io.Pipe()
	body := &watchedBody{PipeReader: pr}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pw.Close() })
	return req, body, pw
}

// roundTripped is what a RoundTrip in a goroutine of its own returned.
type roundTripped struct {
	res *http.Response
	err error
}

// goRoundTrip runs c.RoundTrip(req) in a goroutine of its own.
func goRoundTrip(c *Client, req *http.Request) <-chan roundTripped {
	ch := make(chan roundTripped, 1)
	go func() {
		res, err := c.RoundTrip(req)
		ch <- roundTripped{res, err}
	}()
	return ch
}

// await returns what ch brings, failing t if nothing comes within waitFor.
func await(t *testing.T, ch <-chan roundTripped, what string) roundTripped {
	t.Helper()
	select {
	case rt := <-ch:
		return rt
	case <-time.After(waitFor):
		t.Fatalf("%s: RoundTrip did not return", what)
		return roundTripped{}
	}
}

// readBody reads res's body to its end and closes it.
func readBody(t *testing.T, res *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(res.Body)
	_ = res.Body.Close()
	if err != nil {
		t.Fatalf("body: %v", err)
	}
	return string(b)
}

// TestRequestBody: a request body is written as http.Transport's writeLoop
// writes it, while the response is read.
func TestRequestBody(t *testing.T) {
	t.Run("answered before the body is written", func(t *testing.T) {
		// The backend answers once it has the head, and reads the
		// body after; the client's body is still coming when the
		// answer is read.
		cut := make(chan error, 1)
		rb := testutil.StartRaw(t, func(c net.Conn, br *bufio.Reader) {
			for {
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				if req.Method != http.MethodPost {
					_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
					continue
				}
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
				_, err = io.ReadAll(req.Body)
				cut <- err
			}
		})
		c := newTestClient(time.Second, 0)
		defer c.CloseIdleConnections()
		req, body, pw := pipeRequest(t, context.Background(), http.MethodPost, rb.URL())
		res := await(t, goRoundTrip(c, req), "early answer")
		if res.err != nil {
			t.Fatal(res.err)
		}
		if b := readBody(t, res.res); b != "early" {
			t.Fatalf("body %q, want the early answer", b)
		}
		// The request is still being written: its connection serves
		// no other, and is closed once writeWait has passed.
		h1Get(t, c, http.MethodGet, rb.URL())
		if n := rb.Accepted(); n != 2 {
			t.Errorf("%d connections, want 2: the first was still writing its request", n)
		}
		select {
		case err := <-cut:
			if err == nil {
				t.Error("the backend read a whole body: the request went on being written")
			}
		case <-time.After(waitFor):
			t.Error("the connection whose request did not end was not closed")
		}
		_ = pw.Close()
		testutil.Eventually(t, waitFor, "the body closed", body.closed.Load)
	})

	t.Run("response header timeout runs from the end of the body", func(t *testing.T) {
		first := make(chan struct{})
		rb := testutil.StartRaw(t, func(c net.Conn, br *bufio.Reader) {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			b := make([]byte, 1)
			if _, err := io.ReadFull(req.Body, b); err != nil {
				return
			}
			close(first)
			_, _ = io.Copy(io.Discard, req.Body)
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		})
		const timeout = time.Second
		c := newTestClient(timeout, 0)
		defer c.CloseIdleConnections()
		req, _, pw := pipeRequest(t, context.Background(), http.MethodPut, rb.URL())
		ch := goRoundTrip(c, req)
		_, _ = io.WriteString(pw, "a")
		<-first
		// Longer than the timeout, while the body is still coming.
		time.Sleep(2 * timeout)
		_, _ = io.WriteString(pw, "b")
		_ = pw.Close()
		res := await(t, ch, "slow body")
		if res.err != nil {
			t.Fatalf("error %v: the header timeout ran while the body was written", res.err)
		}
		_ = readBody(t, res.res)
	})

	t.Run("client's body fails", func(t *testing.T) {
		// The backend reads all that comes and answers nothing.
		rb := testutil.StartRaw(t, func(c net.Conn, br *bufio.Reader) { _, _ = io.Copy(io.Discard, br) })
		c := newTestClient(0, 0) // no header timeout: only the failure ends the wait
		req, body, pw := pipeRequest(t, context.Background(), http.MethodPost, rb.URL())
		ch := goRoundTrip(c, req)
		_, _ = io.WriteString(pw, "part")
		broken := errors.New("client went away")
		_ = pw.CloseWithError(broken)
		res := await(t, ch, "body failure")
		if !errors.Is(res.err, broken) {
			t.Errorf("error %v, want the body's %v", res.err, broken)
		}
		if errors.Is(res.err, ErrNotSent) {
			t.Errorf("error %v says not sent, after the head was written", res.err)
		}
		if !body.closed.Load() {
			t.Error("RoundTrip returned before it was done with the body")
		}
		testutil.Eventually(t, waitFor, "the connection closed", func() bool { return rb.Closed() == 1 })
	})

	t.Run("body done with before an error returns", func(t *testing.T) {
		// The backend resets the connection once it has the head and a
		// byte of the body; the rest of the body is not there yet, and
		// the writing waits for it in a read of the client's body.
		reset := make(chan struct{})
		rb := testutil.StartRaw(t, func(c net.Conn, br *bufio.Reader) {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if _, err := io.ReadFull(req.Body, make([]byte, 1)); err != nil {
				return
			}
			_ = c.(*net.TCPConn).SetLinger(0)
			_ = c.Close()
			close(reset)
		})
		c := newTestClient(time.Second, 0)
		req, body, pw := pipeRequest(t, context.Background(), http.MethodPost, rb.URL())
		ch := goRoundTrip(c, req)
		_, _ = io.WriteString(pw, "x")
		<-reset
		// Time for the exchange to read the reset; RoundTrip must not
		// return while the body is still being read.
		time.Sleep(100 * time.Millisecond)
		select {
		case <-ch:
			t.Fatal("RoundTrip returned while its body was being read")
		default:
		}
		_ = pw.Close()
		res := await(t, ch, "reset")
		if res.err == nil {
			t.Fatal("no error from a reset connection")
		}
		if !body.closed.Load() {
			t.Error("RoundTrip returned an error before it was done with the body")
		}
	})
}

// continueBackend reads a request's head and, by how, answers it: "100"
// sends 100 Continue then reads the body and echoes it; "close" answers
// 417 and closes, reporting on got what it read after the head; "keep"
// answers 401 at once, then reads the body and reports it; "wait" reads
// the body and echoes it, having sent nothing before. But for "wait", a
// body that comes before the answer is reported as such.
func continueBackend(t *testing.T, how string, got chan<- string) *testutil.RawBackend {
	return testutil.StartRaw(t, func(c net.Conn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if how != "wait" {
			// A client that waits sends nothing in this while.
			_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			_, err := br.Peek(1)
			_ = c.SetReadDeadline(time.Time{})
			if err == nil {
				got <- "a body not asked for"
				return
			}
		}
		echo := func() {
			body, _ := io.ReadAll(req.Body)
			got <- string(body)
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
		switch how {
		case "100":
			_, _ = io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
			echo()
		case "close":
			_, _ = io.WriteString(c, "HTTP/1.1 417 Expectation Failed\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
			_ = c.(*net.TCPConn).CloseWrite()
			_ = c.SetReadDeadline(time.Now().Add(waitFor))
			rest, _ := io.ReadAll(br)
			got <- string(rest)
		case "keep":
			_, _ = io.WriteString(c, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
			body, _ := io.ReadAll(req.Body)
			got <- string(body)
		case "wait":
			echo()
		}
	})
}

// TestExpectContinue: a body announced with "Expect: 100-continue" goes
// once the backend asks for it with a 100 Continue, or answers without
// closing, or ExpectContinueTimeout passes; not when the backend answers
// and closes.
func TestExpectContinue(t *testing.T) {
	tests := []struct {
		how      string
		timeout  time.Duration // ExpectContinueTimeout
		status   int
		body     string // what the backend reads
		interims []int
	}{
		// With a long timeout, the body goes only on the 100.
		{"100", time.Hour, http.StatusOK, "payload", []int{100}},
		{"close", time.Hour, http.StatusExpectationFailed, "", nil},
		{"keep", time.Hour, http.StatusUnauthorized, "payload", nil},
		{"wait", 50 * time.Millisecond, http.StatusOK, "payload", nil},
	}
	for _, tt := range tests {
		t.Run(tt.how, func(t *testing.T) {
			got := make(chan string, 1)
			rb := continueBackend(t, tt.how, got)
			cfg := testConfig(0, 0)
			cfg.ExpectContinueTimeout = tt.timeout
			c := New(cfg)
			defer c.CloseIdleConnections()
			var interims []int
			trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, _ textproto.MIMEHeader) error {
				interims = append(interims, code)
				return nil
			}}
			ctx := httptrace.WithClientTrace(context.Background(), trace)
			req, err := http.NewRequestWithContext(ctx, http.MethodPut, rb.URL(), strings.NewReader("payload"))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Expect", "100-continue")
			res := await(t, goRoundTrip(c, req), tt.how)
			if res.err != nil {
				t.Fatal(res.err)
			}
			_ = readBody(t, res.res)
			if res.res.StatusCode != tt.status || len(interims) != len(tt.interims) {
				t.Errorf("got %d after %v, want %d after %v", res.res.StatusCode, interims, tt.status, tt.interims)
			}
			select {
			case b := <-got:
				if b != tt.body {
					t.Errorf("the backend read %q, want %q", b, tt.body)
				}
			case <-time.After(waitFor):
				t.Error("the backend read nothing")
			}
		})
	}
}

// failingConn is a connection whose writes fail, taking nothing.
type failingConn struct{ net.Conn }

func (failingConn) Write([]byte) (int, error) { return 0, errors.New("connection reset by peer") }

// TestNotSent: the error of a request of which no byte reached the
// connection wraps ErrNotSent; one of which bytes did does not.
func TestNotSent(t *testing.T) {
	ok := answering("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false)
	untrusted := testutil.NewCerts(t) // no client trusts its authority
	tests := []struct {
		name    string
		start   func(t *testing.T) string // the backend's URL
		dial    func(net.Conn) net.Conn   // what the client's dial returns
		useTLS  bool
		notSent bool
	}{
		{"dial refused", func(t *testing.T) string { return testutil.ClosedURL(t).String() + "/" }, nil, false, true},
		{"TLS handshake failed", func(t *testing.T) string {
			pair, err := tls.LoadX509KeyPair(untrusted.ServerCert, untrusted.ServerKey)
			if err != nil {
				t.Fatal(err)
			}
			return testutil.StartRawTLS(t, &tls.Config{Certificates: []tls.Certificate{pair}}, ok).URL()
		}, nil, true, true},
		{"write failed", func(t *testing.T) string { return testutil.StartRaw(t, ok).URL() },
			func(c net.Conn) net.Conn { return failingConn{c} }, false, true},
		{"reset after the request", func(t *testing.T) string {
			return testutil.StartRaw(t, func(c net.Conn, br *bufio.Reader) {
				if _, err := http.ReadRequest(br); err == nil {
					_ = c.(*net.TCPConn).SetLinger(0)
				}
			}).URL()
		}, nil, false, false},
	}
	for _, tt := range tests {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			t.Run(tt.name+"/"+method, func(t *testing.T) {
				u := tt.start(t)
				cfg := testConfig(time.Second, 0)
				if tt.useTLS {
					cfg.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12} // the system's roots
				}
				if tt.dial != nil {
					dial := cfg.Dial
					cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
						c, err := dial(ctx, network, addr)
						if err != nil {
							return nil, err
						}
						return tt.dial(c), nil
					}
				}
				c := New(cfg)
				defer c.CloseIdleConnections()
				var body io.Reader
				if method == http.MethodPost {
					body = strings.NewReader("payload")
				}
				req, err := http.NewRequest(method, u, body)
				if err != nil {
					t.Fatal(err)
				}
				_, err = c.RoundTrip(req)
				if err == nil {
					t.Fatal("no error")
				}
				if errors.Is(err, ErrNotSent) != tt.notSent {
					t.Errorf("error %v: not sent %v, want %v", err, errors.Is(err, ErrNotSent), tt.notSent)
				}
			})
		}
	}
}
