package proxy

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// trailed sends a request of fields with one DATA frame of body and then
// trailer, its trailer fields, which end the stream, and reads the
// proxy's answer.
func (h *h2Conn) trailed(fields []field, body string, trailer []field) h2Reply {
	h.t.Helper()
	id := h.open()
	err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.encode(fields), EndHeaders: true})
	if err == nil {
		err = h.fr.WriteData(id, false, []byte(body))
	}
	if err == nil {
		err = h.fr.WriteHeaders(http2.HeadersFrameParam{
			StreamID: id, BlockFragment: h.encode(trailer), EndHeaders: true, EndStream: true,
		})
	}
	if err != nil {
		h.t.Fatal(err)
	}
	return h.answer(id)
}

// connectionFields are the fields HTTP/2 forbids (RFC 9113, 8.2.2) because
// they are about one connection: over HTTP/1 they frame the message or
// change the connection it comes on, so that passed on to a backend they
// would frame the body another way than the proxy read it, keep or close
// the proxy's connection, name further fields to drop, or ask to switch
// protocols.
var connectionFields = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade"}

// A connection-specific field sent over HTTP/2, in the header section or
// among the trailers, and a TE other than "trailers", never reach an
// HTTP/1 backend: net/http's HTTP/2 server answers 400 or resets the
// stream before the proxy sees the request, and what is forwarded carries
// only the framing the proxy wrote itself. net/http answers a response
// rather than resetting the stream as RFC 9113 (8.1.1) allows it to, and
// h2spec (8.1.2.2) does not (docs/security.md).
func TestH2ConnectionSpecificFieldsReachNoBackend(t *testing.T) {
	post := map[string]string{":method": "POST"}
	tests := []struct {
		name    string
		fields  []field
		body    string
		trailer []field // sent after the body, ending the stream, when not nil
		status  int     // the answer, unless reset
		reset   bool
		// forwarded: the request reaches the backend, without any of
		// the fields, TE "trailers" aside
		forwarded bool
		// streamed: the request may reach the backend, without the
		// trailers, whose fields are checked as they come after the
		// head and body were sent on
		streamed bool
	}{
		{name: "connection", fields: h2Fields(nil, field{"connection", "keep-alive"}), status: 400},
		{name: "connection naming a field", fields: h2Fields(nil, field{"connection", "x-internal"}, field{"x-internal", "1"}), status: 400},
		{name: "connection close", fields: h2Fields(nil, field{"connection", "close"}), status: 400},
		{name: "keep-alive", fields: h2Fields(nil, field{"keep-alive", "timeout=5"}), status: 400},
		{name: "proxy-connection", fields: h2Fields(nil, field{"proxy-connection", "keep-alive"}), status: 400},
		{name: "transfer-encoding chunked", fields: h2Fields(post, field{"transfer-encoding", "chunked"}),
			body: "5\r\nhello\r\n0\r\n\r\n", status: 400},
		{name: "transfer-encoding and content-length", fields: h2Fields(post, field{"transfer-encoding", "chunked"}, field{"content-length", "5"}),
			body: "hello", status: 400},
		{name: "transfer-encoding identity", fields: h2Fields(post, field{"transfer-encoding", "identity"}), body: "hello", status: 400},
		{name: "upgrade websocket", fields: h2Fields(nil, field{"upgrade", "websocket"}), status: 400},
		{name: "upgrade h2c", fields: h2Fields(nil, field{"upgrade", "h2c"}, field{"http2-settings", "AAMAAABkAAQAAP__"}), status: 400},
		{name: "te chunked", fields: h2Fields(nil, field{"te", "chunked"}), status: 400},
		{name: "te gzip", fields: h2Fields(nil, field{"te", "gzip"}), status: 400},
		{name: "te trailers and chunked", fields: h2Fields(nil, field{"te", "trailers, chunked"}), status: 400},
		{name: "te twice", fields: h2Fields(nil, field{"te", "trailers"}, field{"te", "chunked"}), status: 400},
		// Upper case is no field name in HTTP/2: a malformed request.
		{name: "upper-case Connection", fields: h2Fields(nil, field{"Connection", "close"}), reset: true},
		{name: "upper-case Transfer-Encoding", fields: h2Fields(nil, field{"Transfer-Encoding", "chunked"}), reset: true},

		// net/http resets a stream whose trailers hold a field it does
		// not allow there; it ignores a trailer it was not told of in
		// the header section, or cannot be told of (Transfer-Encoding).
		{name: "trailer connection", fields: h2Fields(post, field{"trailer", "connection"}), body: "hello",
			trailer: []field{{"connection", "close"}}, reset: true, streamed: true},
		{name: "trailer keep-alive", fields: h2Fields(post, field{"trailer", "keep-alive"}), body: "hello",
			trailer: []field{{"keep-alive", "timeout=5"}}, reset: true, streamed: true},
		{name: "trailer proxy-connection", fields: h2Fields(post, field{"trailer", "proxy-connection"}), body: "hello",
			trailer: []field{{"proxy-connection", "close"}}, reset: true, streamed: true},
		{name: "trailer te", fields: h2Fields(post, field{"trailer", "te"}), body: "hello",
			trailer: []field{{"te", "chunked"}}, reset: true, streamed: true},
		{name: "trailer transfer-encoding", fields: h2Fields(post, field{"trailer", "transfer-encoding"}), body: "hello",
			trailer: []field{{"transfer-encoding", "chunked"}}, status: 200, forwarded: true},
		// Upgrade is allowed among trailers; it reaches no backend all
		// the same.
		{name: "trailer upgrade", fields: h2Fields(post, field{"trailer", "upgrade"}), body: "hello",
			trailer: []field{{"upgrade", "h2c"}}, status: 200, forwarded: true},
		{name: "undeclared trailer upgrade", fields: h2Fields(post), body: "hello",
			trailer: []field{{"upgrade", "h2c"}}, status: 200, forwarded: true},

		// What HTTP/2 allows passes, and the backend sees only what it
		// allows over HTTP/1.
		{name: "te trailers", fields: h2Fields(nil, field{"te", "trailers"}), status: 200, forwarded: true},
		{name: "body of unknown length", fields: h2Fields(post), body: "hello", status: 200, forwarded: true},
		{name: "declared trailer", fields: h2Fields(post, field{"trailer", "x-checksum"}), body: "hello",
			trailer: []field{{"x-checksum", "1"}}, status: 200, forwarded: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lb := startLineBackend(t)
			_, addr, cert := startH2Proxy(t, lineBackendConfig(t, lb))
			h := dialH2(t, addr, cert)
			var r h2Reply
			if tt.trailer != nil {
				r = h.trailed(tt.fields, tt.body, tt.trailer)
			} else {
				r = h.request(tt.fields, tt.body)
			}
			switch {
			case tt.reset && (!r.reset || r.code != http2.ErrCodeProtocol):
				t.Errorf("answer %+v, want the stream reset with PROTOCOL_ERROR", r)
			case !tt.reset && (r.reset || r.status != tt.status):
				t.Errorf("answer %+v, want %d", r, tt.status)
			}
			// The connection serves on.
			if r := h.request(h2Fields(map[string]string{":path": "/next"}), ""); r.status != http.StatusOK {
				t.Fatalf("next stream: %+v, want the backend's 200", r)
			}
			got := lb.parsedFields()
			want := 1 // the next stream's
			if tt.forwarded || tt.streamed && len(got) == 2 {
				want = 2
			}
			if len(got) != want {
				t.Fatalf("backend parsed %d requests, want %d: %+v", len(got), want, lb.parsed())
			}
			for _, rf := range got {
				checkHopFields(t, rf)
			}
		})
	}
}

// checkHopFields fails t if a request a backend parsed has a
// connection-specific field other than the framing the proxy writes
// itself, a Transfer-Encoding of "chunked" in the header section, or a TE
// other than "trailers".
func checkHopFields(t *testing.T, rf requestFields) {
	t.Helper()
	for _, name := range connectionFields {
		if v, ok := rf.header[name]; ok && !(name == "Transfer-Encoding" && slices.Equal(v, []string{"chunked"})) {
			t.Errorf("backend got %s: %q", name, v)
		}
		if v, ok := rf.trailer[name]; ok {
			t.Errorf("backend got the trailer %s: %q", name, v)
		}
	}
	if v, ok := rf.header["Te"]; ok && !slices.Equal(v, []string{"trailers"}) {
		t.Errorf("backend got TE: %q", strings.Join(v, ", "))
	}
	if _, ok := rf.trailer["Te"]; ok {
		t.Errorf("backend got the trailer TE: %q", rf.trailer["Te"])
	}
}

// Request trailers are not forwarded, nor the Trailer field naming them:
// their fields come after the body, once the request was routed and its
// header fields checked and rewritten (X-Forwarded-For among them), so
// that passed on they would reach the backend unchecked. RFC 9112 (7.1.2)
// lets a recipient discard them. docs/security.md says so.
func TestRequestTrailersNotForwarded(t *testing.T) {
	trailer := []field{{"x-checksum", "1"}, {"x-forwarded-for", "192.0.2.66"}}
	check := func(t *testing.T, lb *lineBackend) {
		t.Helper()
		whole, fields := lb.wholeRequests(), lb.parsedFields()
		if len(whole) != 1 || whole[0].body != "hello" || len(fields) != 1 {
			t.Fatalf("backend read %+v, want one request with the body %q", whole, "hello")
		}
		if len(fields[0].trailer) != 0 {
			t.Errorf("backend received the trailer fields %v, want none", fields[0].trailer)
		}
		if xff := fields[0].header.Values("X-Forwarded-For"); len(xff) != 1 || xff[0] != "127.0.0.1" {
			t.Errorf("X-Forwarded-For %q, want the proxy's own", xff)
		}
		if got := fields[0].header.Values("Trailer"); len(got) != 0 {
			t.Errorf("backend was told of the trailers %q, which never come", got)
		}
	}
	t.Run("HTTP/1", func(t *testing.T) {
		lb := startLineBackend(t)
		_, u := startProxy(t, lineBackendConfig(t, lb), nil)
		c, err := net.DialTimeout("tcp", u.Host, waitFor)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(waitFor))
		_, err = io.WriteString(c, "POST / HTTP/1.1\r\nHost: app.example\r\nTrailer: X-Checksum, X-Forwarded-For\r\n"+
			"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Checksum: 1\r\nX-Forwarded-For: 192.0.2.66\r\n\r\n")
		if err != nil {
			t.Fatal(err)
		}
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("status %d, want the backend's 200", res.StatusCode)
		}
		check(t, lb)
	})
	t.Run("HTTP/2", func(t *testing.T) {
		lb := startLineBackend(t)
		_, addr, cert := startH2Proxy(t, lineBackendConfig(t, lb))
		h := dialH2(t, addr, cert)
		r := h.trailed(h2Fields(map[string]string{":method": "POST"}, field{"trailer", "x-checksum, x-forwarded-for"}), "hello", trailer)
		if r.reset || r.status != http.StatusOK {
			t.Fatalf("answer %+v, want the backend's 200", r)
		}
		check(t, lb)
	})
}

// Response trailers pass, over HTTP/1 (GET by the proxy's own client, POST
// by http.Transport) and HTTP/2: a backend's checksum or status reported
// after the body reaches the client.
func TestResponseTrailersPass(t *testing.T) {
	bu := testutil.StartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Trailer", "X-Sum")
		_, _ = io.WriteString(w, "body")
		w.Header().Set("X-Sum", "42")
	}))
	cfg := catchAll(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{{URL: bu, Name: "a"}}})
	cert := newTestCert(t)
	cfg.TLS = &config.TLS{Cert: cert.certFile, Key: cert.keyFile}
	_, u := startProxy(t, cfg, nil)
	for _, h2 := range []bool{false, true} {
		c := &http.Client{Transport: &http.Transport{ForceAttemptHTTP2: h2, TLSClientConfig: &tls.Config{RootCAs: cert.roots}}}
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			req, err := http.NewRequest(method, "https://"+u.Host+"/", strings.NewReader("x"))
			if err != nil {
				t.Fatal(err)
			}
			res, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(res.Body)
			res.Body.Close()
			if err != nil || string(body) != "body" || res.Trailer.Get("X-Sum") != "42" || (res.ProtoMajor == 2) != h2 {
				t.Errorf("%s over HTTP/%d: body %q (%v), trailer %v, want %q and X-Sum 42", method, res.ProtoMajor, body, err, res.Trailer, "body")
			}
		}
		c.CloseIdleConnections()
	}
}
