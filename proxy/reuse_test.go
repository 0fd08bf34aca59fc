package proxy

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// schemes are the backends a connection test runs against: plain HTTP, and
// HTTP over TLS.
var schemes = []string{"http", "https"}

// certsFor returns the certificates of https backends; nil for http.
func certsFor(t *testing.T, scheme string) *testutil.Certs {
	t.Helper()
	if scheme == "http" {
		return nil
	}
	return testutil.NewCerts(t)
}

// connBackend starts a testutil.ConnBackend answering with answer, that
// speaks TLS with the server certificate of certs, or plain HTTP when
// certs is nil. Its TLS records are as large as TLS allows from the first,
// as nginx's are: a response and what follows it share one.
func connBackend(t *testing.T, certs *testutil.Certs, answer func(testutil.RawRequest) testutil.Reaction) *testutil.ConnBackend {
	t.Helper()
	if certs == nil {
		return testutil.StartConnBackend(t, answer)
	}
	pair, err := tls.LoadX509KeyPair(certs.ServerCert, certs.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12, DynamicRecordSizingDisabled: true}
	return testutil.StartConnBackendTLS(t, cfg, answer)
}

// poolTLS is the tls section of a pool whose backends have the server
// certificate of certs; nil for nil.
func poolTLS(certs *testutil.Certs) *config.BackendTLS {
	if certs == nil {
		return nil
	}
	return &config.BackendTLS{CA: certs.CA}
}

// tokenOf is the token a request carries: its body, or else the value of t
// in its query.
func tokenOf(r testutil.RawRequest) string {
	if r.Body != "" {
		return r.Body
	}
	u, _ := url.Parse(r.Target)
	return u.Query().Get("t")
}

// tokenHead is the head of a 200 answering the request carrying tok: the
// token in X-Token, and a body of length bytes.
func tokenHead(tok string, length int) string {
	return "HTTP/1.1 200 OK\r\nX-Token: " + tok + "\r\nContent-Length: " + strconv.Itoa(length) + "\r\n\r\n"
}

// strayCase is a backend that sends, on a keep-alive connection, more than
// the answer to the request it read: in the same write as the answer, or
// late, once the client has read the answer.
type strayCase struct {
	name string
	// answer is what the backend writes for a method request carrying
	// tok, and body what the client must receive as the answer's body.
	answer func(method, tok string) (raw, body string)
	late   string // written once the answer was read; "" for none
	head   bool   // the case is one of HEAD requests only
}

// bodyAnswer answers with the token as the body, followed by stray.
func bodyAnswer(stray string) func(method, tok string) (string, string) {
	return func(method, tok string) (string, string) {
		if method == http.MethodHead {
			return tokenHead(tok, len(tok)) + stray, ""
		}
		return tokenHead(tok, len(tok)) + tok + stray, tok
	}
}

// statusAnswer answers with a head of its own holding the token, with no
// body whatever the method, followed by stray.
func statusAnswer(status, stray string) func(method, tok string) (string, string) {
	return func(_, tok string) (string, string) {
		return "HTTP/1.1 " + status + "\r\nX-Token: " + tok + "\r\n\r\n" + stray, ""
	}
}

// strayCases are the ways issue 14's attack had a backend hand one
// client's connection over to the next with bytes left on it.
var strayCases = func() []strayCase {
	long := strings.Repeat("x", 10000)
	chunked := func(stray string) func(method, tok string) (string, string) {
		return func(method, tok string) (string, string) {
			head := "HTTP/1.1 200 OK\r\nX-Token: " + tok + "\r\nTransfer-Encoding: chunked\r\n\r\n"
			if method == http.MethodHead {
				return head + stray, ""
			}
			return head + fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(tok), tok) + stray, tok
		}
	}
	return []strayCase{
		{name: "second response in the same write", answer: bodyAnswer(evilResponse)},
		{name: "second response behind a long body", answer: func(method, tok string) (string, string) {
			if method == http.MethodHead {
				return tokenHead(tok, len(long)) + evilResponse, ""
			}
			return tokenHead(tok, len(long)) + long + evilResponse, long
		}},
		{name: "second and third response queued", answer: bodyAnswer(evilResponse + evilResponse)},
		{name: "second response behind a chunked body", answer: chunked(evilResponse)},
		{name: "second response behind an empty body", answer: func(method, tok string) (string, string) {
			return tokenHead(tok, 0) + evilResponse, ""
		}},
		{name: "second response behind 204", answer: statusAnswer("204 No Content", evilResponse)},
		{name: "second response behind 304", answer: statusAnswer("304 Not Modified", evilResponse)},
		{name: "body sent to HEAD in the same write", head: true, answer: func(_, tok string) (string, string) {
			return tokenHead(tok, len(tok)) + tok, ""
		}},
		{name: "late response after a Content-Length body", answer: bodyAnswer(""), late: evilResponse},
		{name: "late response after an empty body", late: evilResponse, answer: func(_, tok string) (string, string) {
			return tokenHead(tok, 0), ""
		}},
		{name: "late response after a chunked body", answer: chunked(""), late: evilResponse},
		{name: "late response after 204", answer: statusAnswer("204 No Content", ""), late: evilResponse},
		{name: "late response after 304", answer: statusAnswer("304 Not Modified", ""), late: evilResponse},
		{name: "late response after a second one", answer: bodyAnswer(evilResponse), late: evilResponse},
		{name: "body sent to HEAD late", head: true, answer: bodyAnswer(""), late: "EVIL-SMUGGLED"},
		{name: "end of a chunked body sent to HEAD late", head: true, answer: chunked(""), late: "0\r\n\r\n"},
	}
}()

// Concurrent clients, each on a connection of its own, and the requests
// each sends in turn.
const (
	ownClients  = 16
	ownRequests = 3
	// poisoned is how many connections a late case leaves bytes on
	// before the clients come.
	poisoned = 6
)

// clientRequest is what the clients of TestEveryClientItsOwnAnswer send: a
// GET or HEAD carrying its token in the query, or a POST carrying it as
// its body.
func clientRequest(method, base, tok string) (*http.Request, error) {
	if method == http.MethodPost {
		return http.NewRequest(method, base+"/ok", strings.NewReader(tok))
	}
	return http.NewRequest(method, base+"/ok?t="+url.QueryEscape(tok), nil)
}

// TestEveryClientItsOwnAnswer: whatever a backend sends on a keep-alive
// connection beyond the answer to the request it read (a second response
// in the same write, bytes that come once the answer has ended, a body to
// HEAD), no client receives it, and every client receives the answer to
// its own request, with many clients on connections of their own at once:
// for GET, HEAD and POST with a body, to http:// and https:// backends. In
// the late cases, poisoned connections are given their late bytes first,
// then the clients come.
func TestEveryClientItsOwnAnswer(t *testing.T) {
	for _, scheme := range schemes {
		certs := certsFor(t, scheme)
		for _, method := range []string{http.MethodGet, http.MethodHead, http.MethodPost} {
			for _, sc := range strayCases {
				if sc.head && method != http.MethodHead {
					continue
				}
				t.Run(scheme+"/"+method+"/"+sc.name, func(t *testing.T) {
					t.Parallel()
					checkOwnAnswers(t, certs, method, sc)
				})
			}
		}
	}
}

func checkOwnAnswers(t *testing.T, certs *testutil.Certs, method string, sc strayCase) {
	allPoisoning := barrier(poisoned)
	b := connBackend(t, certs, func(r testutil.RawRequest) testutil.Reaction {
		if strings.HasPrefix(r.Target, "/poison") {
			// Held until every poisoning request is in, so that each
			// takes a connection of its own.
			allPoisoning()
		}
		raw, _ := sc.answer(r.Method, tokenOf(r))
		return testutil.Reaction{Raw: raw}
	})
	pc := &config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{{URL: b.BaseURL(), Name: "b"}}, TLS: poolTLS(certs)}
	cfg := catchAll(pc)
	// Many connections at once, each in TLS to an https backend: a
	// machine busy with other work must not time them out.
	cfg.Timeouts.Connect = waitFor
	log, logs := observed()
	_, u := startProxy(t, cfg, log)
	defer func() {
		if t.Failed() {
			for _, e := range entries(logs, "backend request failed") {
				t.Log("the proxy logged: ", e.ContextMap()["error"])
			}
		}
	}()

	var dirty []int // connections late bytes were written on
	if sc.late != "" {
		var wg sync.WaitGroup
		for i := range poisoned {
			wg.Go(func() {
				tok := "poison-" + strconv.Itoa(i)
				req, _ := http.NewRequest(method, u.String()+"/poison?t="+tok, nil)
				if r, err := do(req); err != nil || r.header.Get("X-Token") != tok {
					t.Errorf("poisoning request %d: %v %+v", i, err, r)
				}
			})
		}
		wg.Wait()
		for _, r := range b.Requests() {
			if strings.HasPrefix(r.Target, "/poison") {
				dirty = append(dirty, r.Conn)
				b.Write(r.Conn, sc.late)
			}
		}
		for _, i := range dirty {
			testutil.Eventually(t, waitFor, "the proxy sees what came after the response",
				func() bool { return noticed(b, i) })
		}
	}

	var wg sync.WaitGroup
	for c := range ownClients {
		wg.Go(func() {
			// A client of its own: a connection of its own.
			tr := &http.Transport{DisableCompression: true}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: waitFor}
			for i := range ownRequests {
				tok := fmt.Sprintf("client-%d-%d", c, i)
				_, wantBody := sc.answer(method, tok)
				req, err := clientRequest(method, u.String(), tok)
				if err != nil {
					t.Error(err)
					return
				}
				res, err := client.Do(req)
				if err != nil {
					t.Errorf("%s: %v", tok, err)
					return
				}
				body, err := io.ReadAll(res.Body)
				_ = res.Body.Close()
				if err != nil || res.StatusCode/100 != 2 && res.StatusCode != http.StatusNotModified ||
					res.Header.Get("X-Token") != tok || string(body) != wantBody {
					t.Errorf("%s got %d, X-Token %q, body %.40q (%v); want its own answer",
						tok, res.StatusCode, res.Header.Get("X-Token"), body, err)
				}
			}
		})
	}
	wg.Wait()
	for _, r := range b.Requests() {
		for _, i := range dirty {
			if r.Conn == i && !strings.HasPrefix(r.Target, "/poison") {
				t.Errorf("%s went on connection %d, which late bytes came on", r.Target, i)
			}
		}
	}
	if n, want := len(b.Requests()), ownClients*ownRequests+len(dirty); n != want {
		t.Errorf("the backend read %d requests, want %d: each sent once", n, want)
	}
}

// barrier returns a function that holds each caller until n have called
// it, or waitFor has passed.
func barrier(n int) func() {
	var mu sync.Mutex
	arrived := 0
	all := make(chan struct{})
	return func() {
		mu.Lock()
		if arrived++; arrived == n {
			close(all)
		}
		mu.Unlock()
		select {
		case <-all:
		case <-time.After(waitFor):
		}
	}
}

// do sends req on a connection of its own and returns the reply.
func do(req *http.Request) (reply, error) {
	tr := &http.Transport{DisableKeepAlives: true, DisableCompression: true}
	defer tr.CloseIdleConnections()
	res, err := (&http.Client{Transport: tr, Timeout: waitFor}).Do(req)
	if err != nil {
		return reply{}, err
	}
	defer res.Body.Close()
	var body bytes.Buffer
	_, err = io.Copy(&body, res.Body)
	return reply{status: res.StatusCode, body: body.String(), header: res.Header}, err
}
