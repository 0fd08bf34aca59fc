package h1

import (
	"bufio"
	"context"
	"crypto/tls"
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
// while it is idle; c, the Client (nil for the transport), leaves its idle
// connection in its pool, where the check before reuse finds the bytes once
// they have reached its side of the connection.
func noticed(b *testutil.ConnBackend, c *Client, i int) bool {
	return b.ConnClosed(i) || (c != nil && b.Delivered(i))
}

// headerText is h as it is written on the wire, for comparing.
func headerText(h http.Header) string {
	var b strings.Builder
	_ = h.Write(&b)
	return b.String()
}

// streamStep is one exchange on a backend connection: the request's method
// and body, what the backend answers it with, and what it writes on the
// same connection once the client has read the response.
type streamStep struct {
	method  string
	body    string // "" for none
	chunked bool   // the body is sent without a length
	answer  string
	late    string
}

// request is the step's request to the backend at base, the kth.
func (st streamStep) request(ctx context.Context, base string, k int) (*http.Request, error) {
	var body io.Reader
	if st.body != "" {
		body = strings.NewReader(st.body)
		if st.chunked {
			body = io.MultiReader(body) // of no length net/http knows
		}
	}
	req, err := http.NewRequestWithContext(ctx, st.method, base+"/"+strconv.Itoa(k), body)
	if err != nil {
		return nil, err
	}
	// As the proxy sends it: http.Transport cannot send it again by
	// itself.
	req.GetBody = nil
	return req, nil
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
		for n1xx := 0; ; n1xx++ {
			if res, err = http.ReadResponse(br, &http.Request{Method: method}); err != nil {
				return delivery{err: true}, r.hit, false
			}
			if res.StatusCode < 100 || res.StatusCode > 199 || res.StatusCode == http.StatusSwitchingProtocols {
				break
			}
			if n1xx == max1xxResponses {
				return delivery{err: true}, r.hit, false
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
// each. The backend speaks TLS with srv, plain HTTP for nil. Before each
// next request, a connection that anything came on past its response has
// been noticed (see noticed), so that what rt does with it does not depend
// on timing. c is rt when it is a Client. A request the backend sees twice
// (http.Transport sending it again on its own), or with another body than
// sent, fails t.
func deliveries(t *testing.T, rt http.RoundTripper, c *Client, srv *tls.Config, steps []streamStep) []delivery {
	var mu sync.Mutex
	answered := make(map[int]bool)
	b := testutil.StartConnBackendTLS(t, srv, func(r testutil.RawRequest) testutil.Reaction {
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
	out := make([]delivery, len(steps))
	for k, st := range steps {
		// As ReverseProxy asks, 1xx responses are heard of and passed
		// over; past the Client's cap, the transport, which keeps
		// none, is stopped by the trace.
		n1xx := 0
		trace := &httptrace.ClientTrace{Got1xxResponse: func(int, textproto.MIMEHeader) error {
			if n1xx++; n1xx > max1xxResponses {
				return errTooMany1xx
			}
			return nil
		}}
		ctx, cancel := context.WithTimeout(httptrace.WithClientTrace(t.Context(), trace), waitFor)
		req, err := st.request(ctx, b.BaseURL().String(), k)
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
			body, err := readAsProxy(res.Body)
			_ = res.Body.Close()
			out[k] = delivery{status: res.StatusCode, header: headerText(res.Header), body: body, bodyErr: err != nil}
		}
		cancel()
		conn := b.ConnOf("/" + strconv.Itoa(k))
		sent := 0
		for _, r := range b.Requests() {
			if r.Target == "/"+strconv.Itoa(k) {
				sent++
				if r.Body != st.body {
					t.Errorf("request %d reached the backend with the body %q, want %q", k, r.Body, st.body)
				}
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

// streamMethods are the requests of FuzzStream, by two bits of its
// methods argument per step.
var streamMethods = [4]struct {
	method  string
	chunked bool // a body of unknown length; "" for GET and HEAD
}{{http.MethodGet, false}, {http.MethodHead, false}, {http.MethodPost, false}, {http.MethodPut, true}}

// readAsProxy reads r to its end as ReverseProxy copies a response body:
// into a buffer of its own of 32 KiB, which takes what the connection
// holds past its reader's buffer.
func readAsProxy(r io.Reader) (string, error) {
	var b strings.Builder
	_, err := io.CopyBuffer(struct{ io.Writer }{&b}, r, make([]byte, 32<<10))
	return b.String(), err
}

// FuzzStream: over the same stream of responses and stray bytes on
// keep-alive connections, Client and http.Transport (as the proxy makes
// it) deliver the same response to each request, the one http.ReadResponse
// reads from that request's answer alone, and the backend reads each
// request once, whole. Three requests, each a GET, a HEAD, a POST with a
// body of known length or a PUT with a chunked one, by two bits of methods
// each; each answer may hold anything (a second response, a body to HEAD, a
// cut), and late bytes follow the first two; to a backend in plain HTTP or
// in TLS. Which connection a request goes on is not compared: the Client
// closes one after a response framed both by Content-Length and chunked,
// where http.Transport keeps it (see the package comment).
func FuzzStream(f *testing.F) {
	const ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	const post, put = 0b101010, 0b111111
	f.Add(uint8(0), false, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"+evilResponse, "", ok, "", ok)
	f.Add(uint8(post), true, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"+evilResponse, "", ok, "", ok)
	f.Add(uint8(0), false, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none", evilResponse, ok, evilResponse, ok)
	f.Add(uint8(put), true, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none", evilResponse, ok, evilResponse, ok)
	f.Add(uint8(post), false, "HTTP/1.1 204 No Content\r\n\r\n", evilResponse, "HTTP/1.1 304 Not Modified\r\n\r\n", evilResponse, ok)
	f.Add(uint8(1), false, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "0\r\n\r\n", ok, "", ok)
	f.Add(uint8(0b010101), true, "HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nEVIL-SMUGGLED", "", ok, "x", ok)
	f.Add(uint8(put), false, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", "", "HTTP/1.1 200 OK\r\n\r\nto the end", "", ok)
	f.Add(uint8(post), true, "HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n"+strings.Repeat("x", 10000)+evilResponse, "", ok, "", ok)
	f.Add(uint8(0), false, "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"+ok, "", "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\ncut", "", ok)
	f.Add(uint8(post), false, "HTTP/1.1 100 Continue\r\n\r\n"+ok, "", "HTTP/1.1 413 Too Large\r\nConnection: close\r\n\r\n", "", ok)
	f.Add(uint8(0), true, "HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n", "", "HTTP/1.0 200 OK\r\n\r\nold", "", "")
	f.Add(uint8(0), false, "HTTP/1.1 101 Switching Protocols\r\n\r\n", "", ok, "HTTP/1.1 200 OK\r\n", ok)
	// Each hostile response (testdata) to a GET and to a POST, then two
	// requests answered well on what connections are left.
	for _, h := range testutil.HostileResponses(f) {
		f.Add(uint8(0), false, h.Raw, "", ok, "", ok)
		f.Add(uint8(0b10), false, h.Raw, "", ok, "", ok)
	}
	certs := testutil.NewCerts(f)
	srv := serverTLS(f, certs)
	f.Fuzz(func(t *testing.T, methods uint8, useTLS bool, a1, l1, a2, l2, a3 string) {
		step := func(i int, answer, late string) streamStep {
			m := streamMethods[methods>>(2*i)&3]
			st := streamStep{method: m.method, chunked: m.chunked, answer: answer, late: late}
			if m.method == http.MethodPost || m.method == http.MethodPut {
				st.body = "body of " + strconv.Itoa(i)
			}
			return st
		}
		steps := []streamStep{step(0, a1, l1), step(1, a2, l2), step(2, a3, "")}
		cfg := testConfig(30*time.Second, 90*time.Second)
		var backendTLS *tls.Config
		if useTLS {
			cfg.TLSClientConfig, backendTLS = certs.Client, srv
		}
		c := New(cfg)
		defer c.CloseIdleConnections()
		tr := newTransport(cfg)
		defer tr.CloseIdleConnections()
		got, want := deliveries(t, c, c, backendTLS, steps), deliveries(t, tr, nil, backendTLS, steps)
		for k, st := range steps {
			oracle, _, _ := expected(st.method, st.answer)
			if got[k] != want[k] || got[k] != oracle {
				t.Errorf("request %d (%s, answered %q):\nClient         %v\nhttp.Transport %v\nReadResponse   %v",
					k, st.method, st.answer, got[k], want[k], oracle)
			}
		}
	})
}
