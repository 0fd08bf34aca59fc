package h1

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/affinityproxy/affinity/internal/testutil"
)

// serverTLS is a TLS config serving the server certificate of certs. Its
// records are as large as TLS allows from the first, as nginx's are: a
// response and what follows it share one, of which a reader may take the
// response alone, leaving the rest in crypto/tls.
func serverTLS(t testing.TB, certs *testutil.Certs) *tls.Config {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(certs.ServerCert, certs.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12, DynamicRecordSizingDisabled: true}
}

// TestConcurrentClients: many requests at once over one Client, each with a
// token of its own, to a backend that sends more than its answer on the
// same connection (a second response in the same write, after a body of
// each framing, a body to HEAD): each request gets the answer to itself,
// for GET, HEAD and POST with a body, in plain HTTP and in TLS.
func TestConcurrentClients(t *testing.T) {
	const clients, requests = 16, 3
	// body is what an answer with the token tok carries as its body;
	// stray is what the backend writes behind it, in the same write.
	long := func(tok string) string { return tok + strings.Repeat("x", 10000) }
	lengthAnswer := func(body func(tok string) string, stray string) func(method, tok string) (string, string) {
		return func(method, tok string) (string, string) {
			b := body(tok)
			head := "HTTP/1.1 200 OK\r\nX-Token: " + tok + "\r\nContent-Length: " + strconv.Itoa(len(b)) + "\r\n\r\n"
			if method == http.MethodHead {
				return head + stray, ""
			}
			return head + b + stray, b
		}
	}
	answers := []struct {
		name string
		// answer is the backend's answer to a method request with the
		// token tok, stray bytes included, and the body the client
		// must receive.
		answer func(method, tok string) (raw, body string)
	}{
		{"second response in the same write", lengthAnswer(func(tok string) string { return tok }, evilResponse)},
		// In TLS, the end of the body and the second response come in
		// one record, of which a reader with a large buffer takes the
		// body alone.
		{"second response behind a long body", lengthAnswer(long, evilResponse)},
		{"second response behind a chunked body", func(method, tok string) (string, string) {
			head := "HTTP/1.1 200 OK\r\nX-Token: " + tok + "\r\nTransfer-Encoding: chunked\r\n\r\n"
			if method == http.MethodHead {
				return head + evilResponse, ""
			}
			return head + fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(tok), tok) + evilResponse, tok
		}},
		{"second response behind 204", func(_, tok string) (string, string) {
			return "HTTP/1.1 204 No Content\r\nX-Token: " + tok + "\r\n\r\n" + evilResponse, ""
		}},
		{"body to HEAD", func(method, tok string) (string, string) {
			head := "HTTP/1.1 200 OK\r\nX-Token: " + tok + "\r\nContent-Length: " + strconv.Itoa(len(tok)) + "\r\n\r\n"
			if method == http.MethodHead {
				return head + tok, ""
			}
			return head + tok, tok
		}},
	}
	certs := testutil.NewCerts(t)
	for _, useTLS := range []bool{false, true} {
		for _, a := range answers {
			for _, method := range []string{http.MethodGet, http.MethodHead, http.MethodPost} {
				t.Run(fmt.Sprintf("tls %v/%s/%s", useTLS, a.name, method), func(t *testing.T) {
					var srv *tls.Config
					cfg := testConfig(waitFor, 0)
					// Every connection ends with its first answer, and the
					// next is dialed (in TLS, with a handshake) while
					// others are: a busy machine must not time them out.
					cfg.TLSHandshakeTimeout = waitFor
					if useTLS {
						srv, cfg.TLSClientConfig = serverTLS(t, certs), certs.Client
					}
					b := testutil.StartConnBackendTLS(t, srv, func(r testutil.RawRequest) testutil.Reaction {
						tok := r.Body
						if tok == "" {
							u, _ := url.Parse(r.Target)
							tok = u.Query().Get("t")
						}
						raw, _ := a.answer(r.Method, tok)
						return testutil.Reaction{Raw: raw}
					})
					c := New(cfg)
					defer c.CloseIdleConnections()
					var wg sync.WaitGroup
					for i := range clients {
						wg.Go(func() {
							for j := range requests {
								tok := fmt.Sprintf("client-%d-%d", i, j)
								_, body := a.answer(method, tok)
								if err := ownAnswer(c, b.BaseURL().String(), method, tok, body); err != nil {
									t.Error(err)
									return
								}
							}
						})
					}
					wg.Wait()
					if n := len(b.Requests()); n != clients*requests {
						t.Errorf("the backend read %d requests, want %d", n, clients*requests)
					}
				})
			}
		}
	}
}

// ownAnswer sends a request with method carrying tok through c, and
// returns an error unless it is answered 2xx with tok in X-Token and body
// as its body.
func ownAnswer(c *Client, base, method, tok, body string) error {
	var rb io.Reader
	target := base + "/?t=" + tok
	if method == http.MethodPost {
		rb, target = strings.NewReader(tok), base+"/"
	}
	req, err := http.NewRequest(method, target, rb)
	if err != nil {
		return err
	}
	res, err := c.RoundTrip(req)
	if err != nil {
		return fmt.Errorf("%s: %w", tok, err)
	}
	got, err := readAsProxy(res.Body)
	_ = res.Body.Close()
	if err != nil || res.StatusCode/100 != 2 || res.Header.Get("X-Token") != tok || got != body {
		return fmt.Errorf("%s got %d, X-Token %q, body %.40q (%v); want its own answer",
			tok, res.StatusCode, res.Header.Get("X-Token"), got, err)
	}
	return nil
}
