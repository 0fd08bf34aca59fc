package h1

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/testutil"
)

// stalling returns a serve function answering each request with head,
// then sending body one piece at a time, every gap, then nothing until
// the connection closes.
func stalling(head string, body []string, gap time.Duration) func(net.Conn, *bufio.Reader) {
	return func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		if _, err := io.WriteString(c, head); err != nil {
			return
		}
		for _, b := range body {
			time.Sleep(gap)
			if _, err := io.WriteString(c, b); err != nil {
				return
			}
		}
		_, _ = br.ReadByte() // until the client closes it
	}
}

// TestResponseBodyTimeout: ResponseBodyTimeout bounds the silence between
// two reads of a body, whatever frames it, and not the whole transfer: a
// body that stops coming ends in a timeout and its connection is closed;
// one that keeps coming, slower in all than the timeout, is read whole.
func TestResponseBodyTimeout(t *testing.T) {
	const wait = 300 * time.Millisecond
	tests := []struct {
		name  string
		head  string
		body  []string
		gap   time.Duration // between the pieces of body
		want  string        // the body read, when whole
		stall bool          // the body stops before its end
	}{
		{"length, stalls", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok", nil, 0, "", true},
		{"chunked, stalls", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n", nil, 0, "", true},
		{"until close, stalls", "HTTP/1.1 200 OK\r\n\r\nok", nil, 0, "", true},
		{"head alone, stalls", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", nil, 0, "", true},
		// Eight pieces a third of the timeout apart: the whole body takes
		// more than twice the timeout, no gap comes near it.
		{"length, trickles", "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n",
			strings.Split("abcdefgh", ""), wait / 3, "abcdefgh", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rb := testutil.StartRaw(t, stalling(tt.head, tt.body, tt.gap))
			cfg := testConfig(time.Second, 0)
			cfg.ResponseBodyTimeout = wait
			c := New(cfg)
			defer c.CloseIdleConnections()
			req, _ := http.NewRequest(http.MethodGet, rb.URL(), nil)
			res, err := c.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			var body []byte
			go func() {
				defer close(done)
				body, err = io.ReadAll(res.Body)
			}()
			select {
			case <-done:
			case <-time.After(waitFor + 10*wait):
				_ = res.Body.Close()
				<-done
				t.Fatal("the body's read never ended")
			}
			_ = res.Body.Close()
			if !tt.stall {
				if err != nil || string(body) != tt.want {
					t.Fatalf("body %q, %v; want %q read whole", body, err, tt.want)
				}
				return
			}
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() || !errors.As(err, new(bodyTimeoutError)) {
				t.Fatalf("body read ended with %v, want a body timeout", err)
			}
			testutil.Eventually(t, waitFor, "stalled connection closed", func() bool { return rb.Closed() == 1 })
		})
	}
}

// TestBodyDeadlineCleared: the deadline of a body's last read does not
// outlive it: a request on the same connection long after, with no header
// timeout, waits for its response as long as it takes.
func TestBodyDeadlineCleared(t *testing.T) {
	const wait = 100 * time.Millisecond
	rb := testutil.StartRaw(t, func(c net.Conn, br *bufio.Reader) {
		for {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			// The body comes apart from the head, so that it is read
			// from the socket under the body's deadline.
			if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"); err != nil {
				return
			}
			time.Sleep(wait / 2)
			if _, err := io.WriteString(c, "ok"); err != nil {
				return
			}
		}
	})
	cfg := testConfig(0, 0)
	cfg.ResponseBodyTimeout = wait
	c := New(cfg)
	defer c.CloseIdleConnections()
	h1Get(t, c, http.MethodGet, rb.URL())
	time.Sleep(3 * wait) // past the first body's deadline
	if _, body := h1Get(t, c, http.MethodGet, rb.URL()); body != "ok" {
		t.Fatalf("body %q", body)
	}
	if n := rb.Accepted(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}
