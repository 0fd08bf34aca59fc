package h1

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/testutil"
)

const evilResponse = "HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nEVIL-SMUGGLED"

// noticed reports whether a client of b can see what arrived on its
// connection i: http.Transport closes a connection anything arrives on
// while it is idle, and c's idle connection has it waiting for the check
// before its next use. c is the Client in use, or nil.
func noticed(b *testutil.ConnBackend, c *Client, i int) bool {
	if b.ConnClosed(i) {
		return true
	}
	if c == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, hc := range c.idle[b.Addr()] {
		if !hc.peek.quiet() {
			return true
		}
	}
	return false
}

// headerText is h as it is written on the wire, for comparing.
func headerText(h http.Header) string {
	var b strings.Builder
	_ = h.Write(&b)
	return b.String()
}

// streamStep is one exchange on a backend connection: the request's method,
// what the backend answers it with, and what it writes on the same
// connection once the client has read the response.
type streamStep struct {
	method, answer, late string
}

// delivery is what a client delivered for one request.
type delivery struct {
	err     bool // no response
	status  int
	header  string
	body    string
	bodyErr bool // reading the body failed
}

func (d delivery) String() string {
	if d.err {
		return "error"
	}
	return fmt.Sprintf("%d %q body %q (error %t)", d.status, d.header, d.body, d.bodyErr)
}

// endReader reads s, then returns io.EOF when eof is set; it notes
// whether anything read up to the end of s, where a client reading from a
// connection would wait for more.
type endReader struct {
	s   *strings.Reader
	eof bool
	hit bool // a read found s at its end
}

func (r *endReader) Read(p []byte) (int, error) {
	n, err := r.s.Read(p)
	if err == io.EOF {
		r.hit = true
		if !r.eof {
			err = io.ErrNoProgress
		}
	}
	return n, err
}

// expected is the oracle of FuzzStream, by http.ReadResponse: what a
// client reading answer as the response to a method request delivers.
// needsEnd reports that reading it reaches the end of answer and would wait
// past it (a body delimited by the connection's close, or an answer cut
// short): the backend then closes the connection after answer, and the
// delivery is what the close gives. extra reports bytes after the response.
func expected(method, answer string) (d delivery, needsEnd, extra bool) {
	read := func(eof bool) (delivery, bool, bool) {
		r := &endReader{s: strings.NewReader(answer), eof: eof}
		br := bufio.NewReader(r)
		var res *http.Response
		var err error
		for {
			if res, err = http.ReadResponse(br, &http.Request{Method: method}); err != nil {
				return delivery{err: true}, r.hit, false
			}
			if res.StatusCode < 100 || res.StatusCode > 199 || res.StatusCode == http.StatusSwitchingProtocols {
				break
			}
		}
		d := delivery{status: res.StatusCode, header: headerText(res.Header)}
		if res.StatusCode == http.StatusSwitchingProtocols {
			return d, false, true // the connection is the client's, or closed
		}
		body, err := io.ReadAll(res.Body)
		d.body, d.bodyErr = string(body), err != nil
		return d, r.hit, br.Buffered() > 0 || r.s.Len() > 0
	}
	if d, needsEnd, extra = read(false); needsEnd {
		d, _, _ = read(true)
	}
	return d, needsEnd, extra
}

// deliveries has rt send a request per step to a backend answering each as
// the step says, one after the other, and returns what rt delivered for
// each. Before each next request, a connection that anything came on past
// its response has been noticed (see noticed), so that what rt does with
// it does not depend on timing. c is rt when it is a Client. A request the
// backend sees twice (http.Transport sending it again on its own) fails t.
func deliveries(t *testing.T, rt http.RoundTripper, c *Client, steps []streamStep) []delivery {
	var mu sync.Mutex
	answered := make(map[int]bool)
	b := testutil.StartConnBackend(t, func(r testutil.RawRequest) testutil.Reaction {
		k, err := strconv.Atoi(strings.TrimPrefix(r.Target, "/"))
		mu.Lock()
		again := answered[k]
		answered[k] = true
		mu.Unlock()
		if err != nil || k < 0 || k >= len(steps) || again {
			// Not one of ours (a port on a shared machine is soon
			// someone else's), or sent again, which the check below
			// reports.
			return testutil.Reaction{End: testutil.CloseConn}
		}
		_, needsEnd, _ := expected(steps[k].method, steps[k].answer)
		re := testutil.Reaction{Raw: steps[k].answer}
		if needsEnd {
			re.End = testutil.CloseConn
		}
		return re
	})
	// As ReverseProxy asks, 1xx responses are heard of and passed over.
	trace := &httptrace.ClientTrace{Got1xxResponse: func(int, textproto.MIMEHeader) error { return nil }}
	ctx := httptrace.WithClientTrace(t.Context(), trace)
	out := make([]delivery, len(steps))
	for k, st := range steps {
		ctx, cancel := context.WithTimeout(ctx, waitFor)
		req, err := http.NewRequestWithContext(ctx, st.method, b.BaseURL().String()+"/"+strconv.Itoa(k), nil)
		if err != nil {
			t.Fatal(err)
		}
		res, err := rt.RoundTrip(req)
		switch {
		case err != nil:
			out[k] = delivery{err: true}
		case res.StatusCode == http.StatusSwitchingProtocols:
			out[k] = delivery{status: res.StatusCode, header: headerText(res.Header)}
			_ = res.Body.Close()
		default:
			body, err := io.ReadAll(res.Body)
			_ = res.Body.Close()
			out[k] = delivery{status: res.StatusCode, header: headerText(res.Header), body: string(body), bodyErr: err != nil}
		}
		cancel()
		conn := b.ConnOf("/" + strconv.Itoa(k))
		sent := 0
		for _, r := range b.Requests() {
			if r.Target == "/"+strconv.Itoa(k) {
				sent++
			}
		}
		if sent != 1 {
			t.Fatalf("the backend saw request %d %d times: %+v", k, sent, b.Requests())
		}
		_, _, extra := expected(st.method, st.answer)
		if st.late != "" {
			b.Write(conn, st.late)
		}
		if extra || st.late != "" {
			testutil.Eventually(t, waitFor, "the client sees what came after the response",
				func() bool { return noticed(b, c, conn) })
		}
	}
	return out
}

// FuzzStream: over the same stream of responses and stray bytes on
// keep-alive connections, Client and http.Transport (as the proxy makes
// it) deliver the same response to each request, the one http.ReadResponse
// reads from that request's answer alone. Three requests, GET or HEAD by
// the bits of heads; each answer may hold anything (a second response, a
// body to HEAD, a cut), and late bytes follow the first two.
func FuzzStream(f *testing.F) {
	const ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	f.Add(uint8(0), "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"+evilResponse, "", ok, "", ok)
	f.Add(uint8(0), "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none", evilResponse, ok, evilResponse, ok)
	f.Add(uint8(0), "HTTP/1.1 204 No Content\r\n\r\n", evilResponse, "HTTP/1.1 304 Not Modified\r\n\r\n", evilResponse, ok)
	f.Add(uint8(1), "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "0\r\n\r\n", ok, "", ok)
	f.Add(uint8(3), "HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nEVIL-SMUGGLED", "", ok, "x", ok)
	f.Add(uint8(0), "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", "", "HTTP/1.1 200 OK\r\n\r\nto the end", "", ok)
	f.Add(uint8(0), "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"+ok, "", "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\ncut", "", ok)
	f.Add(uint8(0), "HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n", "", "HTTP/1.0 200 OK\r\n\r\nold", "", "")
	f.Add(uint8(0), "HTTP/1.1 101 Switching Protocols\r\n\r\n", "", ok, "HTTP/1.1 200 OK\r\n", ok)
	f.Fuzz(func(t *testing.T, heads uint8, a1, l1, a2, l2, a3 string) {
		method := func(i int) string {
			if heads&(1<<i) != 0 {
				return http.MethodHead
			}
			return http.MethodGet
		}
		steps := []streamStep{{method(0), a1, l1}, {method(1), a2, l2}, {method(2), a3, ""}}
		cfg := testConfig(30*time.Second, 90*time.Second)
		c := New(cfg)
		defer c.CloseIdleConnections()
		tr := newTransport(cfg)
		defer tr.CloseIdleConnections()
		got, want := deliveries(t, c, c, steps), deliveries(t, tr, nil, steps)
		for k, st := range steps {
			oracle, _, _ := expected(st.method, st.answer)
			if got[k] != want[k] || got[k] != oracle {
				t.Errorf("request %d (%s, answered %q):\nClient         %v\nhttp.Transport %v\nReadResponse   %v",
					k, st.method, st.answer, got[k], want[k], oracle)
			}
		}
	})
}
