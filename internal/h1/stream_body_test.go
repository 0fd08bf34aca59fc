package h1

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/testutil"
)

// roundTripper is what the tests of this file hold the Client and
// http.Transport alike to.
type roundTripper interface {
	RoundTrip(*http.Request) (*http.Response, error)
	CloseIdleConnections()
}

// bothClients returns a Client and the http.Transport it is held to, made
// with the same Config, by name.
func bothClients() map[string]roundTripper {
	cfg := testConfig(waitFor, 0)
	return map[string]roundTripper{"h1": New(cfg), "http.Transport": newTransport(cfg)}
}

// A request body goes to the backend as the client sends it, part by
// part, with a declared length or without: the backend reads each part
// before the next is written. Held in a buffer until it filled, a slow
// body reached the backend in bursts, or not at all for as long as a
// backend waits for a body, which then gave up on a client sending
// steadily.
func TestBodyStreams(t *testing.T) {
	parts := []string{"first part", "second part", "last"}
	for name, rt := range bothClients() {
		for _, length := range []int64{-1, int64(len(parts[0] + parts[1] + parts[2]))} {
			t.Run(fmt.Sprintf("%s/length %d", name, length), func(t *testing.T) {
				defer rt.CloseIdleConnections()
				got := make(chan string)
				rb := testutil.StartRaw(t, func(c net.Conn, br *bufio.Reader) {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					for _, p := range parts {
						b := make([]byte, len(p))
						if _, err := io.ReadFull(req.Body, b); err != nil {
							return
						}
						got <- string(b)
					}
					_, _ = io.Copy(io.Discard, req.Body)
					_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				})
				pr, pw := io.Pipe()
				defer pw.Close()
				req, err := http.NewRequest(http.MethodPost, rb.URL(), pr)
				if err != nil {
					t.Fatal(err)
				}
				req.ContentLength = length
				done := make(chan roundTripped, 1)
				go func() {
					res, err := rt.RoundTrip(req)
					done <- roundTripped{res, err}
				}()
				for _, p := range parts {
					if _, err := io.WriteString(pw, p); err != nil {
						t.Fatal(err)
					}
					if b := receive(t, got); b != p {
						t.Fatalf("backend read %q, want %q", b, p)
					}
				}
				_ = pw.Close()
				res := await(t, done, "streamed body")
				if res.err != nil {
					t.Fatal(res.err)
				}
				if b := readBody(t, res.res); b != "ok" {
					t.Errorf("body %q", b)
				}
			})
		}
	}
}

// receive returns what ch brings, failing t if nothing comes within
// waitFor: the part was held back.
func receive(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(waitFor):
		t.Fatal("the backend did not get the part written: it was held back")
		return ""
	}
}

// GotConn is reported as http.Transport reports it: the connection the
// request goes on, new, then reused and idle.
func TestGotConn(t *testing.T) {
	rb := testutil.StartRaw(t, answering("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false))
	for name, rt := range bothClients() {
		t.Run(name, func(t *testing.T) {
			defer rt.CloseIdleConnections()
			var infos []httptrace.GotConnInfo
			trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { infos = append(infos, i) }}
			ctx := httptrace.WithClientTrace(context.Background(), trace)
			for range 2 {
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, rb.URL(), nil)
				if err != nil {
					t.Fatal(err)
				}
				res, err := rt.RoundTrip(req)
				if err != nil {
					t.Fatal(err)
				}
				readBody(t, res)
			}
			if len(infos) != 2 {
				t.Fatalf("GotConn reported %d times, want 2", len(infos))
			}
			if infos[0].Reused || infos[0].WasIdle || !infos[1].Reused || !infos[1].WasIdle {
				t.Errorf("GotConn %+v, then %+v; want new, then reused and idle", infos[0], infos[1])
			}
			if infos[0].Conn == nil || infos[0].Conn != infos[1].Conn || infos[0].Conn.RemoteAddr().String() != rb.Addr() {
				t.Errorf("GotConn's connections %v and %v, want the same one to %s", infos[0].Conn, infos[1].Conn, rb.Addr())
			}
		})
	}
}
