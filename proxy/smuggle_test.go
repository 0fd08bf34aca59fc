package proxy

import (
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// seenRequest is what the backend of the smuggling tests parsed.
type seenRequest struct {
	method, path, body string
}

// TestRequestSmuggling sends framing attacks over raw TCP to a real
// listener. The proxy routes only /public/ to the backend and answers 404
// to anything else, so /admin reaching the backend would mean a request
// slipped past the proxy's parsing. Each attempt is either refused (400, or
// 501 for a transfer coding net/http does not implement) with nothing
// forwarded, or parsed one unambiguous way (RFC 9112, section 6.3) and
// forwarded re-framed, so that the backend parses exactly what the proxy
// did.
func TestRequestSmuggling(t *testing.T) {
	const smuggled = "GET /admin HTTP/1.1\r\nHost: x\r\n\r\n"
	// last closes the connection, so that reading ends without a timeout.
	const last = "GET /public/last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
	chunk := func(s string) string { return strconv.FormatInt(int64(len(s)), 16) + "\r\n" + s + "\r\n" }
	tests := []struct {
		name string
		raw  string
		// statuses of the responses, in order; refused attempts get one.
		statuses []int
		// the requests the backend parsed, in order.
		backend []seenRequest
	}{
		{
			// CL.TE: a front trusting Content-Length would forward all of
			// it as one body; the chunked body ends at "0", so the rest is
			// the client's next request on its own connection, which the
			// proxy routes (404) like any other.
			name: "Content-Length and Transfer-Encoding, body ends early",
			raw: "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n" +
				"0\r\n\r\n" + smuggled + last,
			statuses: []int{200, 404, 200},
			backend:  []seenRequest{{"POST", "/public/a", ""}, {"GET", "/public/last", ""}},
		},
		{
			// TE.CL: the smuggled request is data inside the chunked body,
			// forwarded as data.
			name: "Content-Length and Transfer-Encoding, request inside the body",
			raw: "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" +
				chunk(smuggled) + "0\r\n\r\n" + last,
			statuses: []int{200, 200},
			backend:  []seenRequest{{"POST", "/public/a", smuggled}, {"GET", "/public/last", ""}},
		},
		{
			name:     "conflicting Content-Length",
			raw:      "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 38\r\n\r\nhello" + smuggled + last,
			statuses: []int{400},
		},
		{
			name:     "Content-Length list",
			raw:      "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 38\r\n\r\nhello" + smuggled + last,
			statuses: []int{400},
		},
		{
			name:     "signed Content-Length",
			raw:      "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello" + smuggled + last,
			statuses: []int{400},
		},
		{
			// RFC 9110 (8.6) lets a recipient merge identical values.
			name:     "duplicate identical Content-Length",
			raw:      "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello" + last,
			statuses: []int{200, 200},
			backend:  []seenRequest{{"POST", "/public/a", "hello"}, {"GET", "/public/last", ""}},
		},
		{
			name:     "Transfer-Encoding chunked, identity",
			raw:      "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked, identity\r\n\r\nhello" + smuggled + last,
			statuses: []int{501},
		},
		{
			name:     "Transfer-Encoding xchunked",
			raw:      "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: xchunked\r\n\r\nhello" + smuggled + last,
			statuses: []int{501},
		},
		{
			name:     "Transfer-Encoding twice",
			raw:      "POST /public/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled + last,
			statuses: []int{501},
		},
		{
			name:     "Transfer-Encoding with a vertical tab",
			raw:      "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: \x0bchunked\r\n\r\nhello" + smuggled + last,
			statuses: []int{400},
		},
		{
			name:     "space before the colon",
			raw:      "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding : chunked\r\n\r\nhello" + smuggled + last,
			statuses: []int{400},
		},
		{
			name:     "Transfer-Encoding folded onto a second line",
			raw:      "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding:\r\n chunked\r\n\r\nhello" + smuggled + last,
			statuses: []int{400},
		},
		{
			// Leading whitespace is not part of a field value: this is
			// plain chunked, read as such.
			name: "Transfer-Encoding with leading space",
			raw: "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding:    chunked\r\n\r\n" +
				chunk("hello") + "0\r\n\r\n" + last,
			statuses: []int{200, 200},
			backend:  []seenRequest{{"POST", "/public/a", "hello"}, {"GET", "/public/last", ""}},
		},
		{
			name:     "bare LF line ends",
			raw:      "POST /public/a HTTP/1.1\nHost: x\nContent-Length: 5\nTransfer-Encoding: chunked\n\n0\n\n" + smuggled + last,
			statuses: []int{400},
		},
		{
			name:     "invalid chunk size",
			raw:      "POST /public/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n" + smuggled + last,
			statuses: []int{400},
		},
		{
			// HTTP/1.0 has no chunked coding: net/http ignores the
			// header, takes Content-Length and closes after the answer.
			name:     "Transfer-Encoding in HTTP/1.0",
			raw:      "POST /public/a HTTP/1.0\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello" + smuggled,
			statuses: []int{200},
			backend:  []seenRequest{{"POST", "/public/a", "hello"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var seen []seenRequest
			bu := testutil.StartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				body, err := io.ReadAll(r.Body)
				if err != nil {
					// A body cut short is no request the backend acts on.
					return
				}
				mu.Lock()
				seen = append(seen, seenRequest{r.Method, r.URL.Path, string(body)})
				mu.Unlock()
			}))
			cfg := catchAll(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
				Backends: []config.Backend{{URL: bu, Name: "a"}}})
			cfg.Routes = []config.Route{{Match: config.Match{Path: "/public/"}, Pool: "web"}}
			_, u := startProxy(t, cfg, nil)

			var statuses []int
			for _, r := range rawExchange(t, u.Host, tt.raw) {
				statuses = append(statuses, r.StatusCode)
			}
			if !slices.Equal(statuses, tt.statuses) {
				t.Errorf("statuses %v, want %v", statuses, tt.statuses)
			}
			mu.Lock()
			defer mu.Unlock()
			for _, r := range seen {
				if strings.HasPrefix(r.path, "/admin") {
					t.Fatalf("a smuggled request reached the backend: %+v", r)
				}
			}
			if !slices.Equal(seen, tt.backend) {
				t.Errorf("backend parsed %+v, want %+v", seen, tt.backend)
			}
		})
	}
}

// Over HTTP/1 too, no request becomes a tunnel the proxy cannot see into:
// CONNECT is refused and the connection closed, and an upgrade to h2c
// (which a backend serving h2c would switch to, then read requests from
// the tunnel) is forwarded as a plain request. Other upgrades, WebSocket's,
// are forwarded (TestUpgradeEcho). What net/http's HTTP/1 server accepts
// but a backend may read another way, or the transport would refuse, is
// refused as over HTTP/2 (TestH2RequestWrittenAsHTTP1).
func TestHTTP1RequestsRejected(t *testing.T) {
	const smuggled = "POST /admin/delete-user?id=42 HTTP/1.1\r\nHost: admin.internal\r\nContent-Length: 0\r\n\r\n"
	const last = "GET /last HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n"
	tests := []struct {
		name     string
		raw      string
		statuses []int
		backend  []parsedRequest
	}{
		{
			name:     "CONNECT",
			raw:      "CONNECT admin.internal:80 HTTP/1.1\r\nHost: admin.internal:80\r\n\r\n" + smuggled + last,
			statuses: []int{501},
		},
		{
			name:     "CONNECT with a path",
			raw:      "CONNECT / HTTP/1.1\r\nHost: app.example\r\n\r\n" + smuggled + last,
			statuses: []int{501},
		},
		{
			name: "upgrade to h2c",
			raw: "GET / HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n" +
				"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n" + last,
			statuses: []int{200, 200},
			backend:  []parsedRequest{{"GET / HTTP/1.1", "app.example", ""}, {"GET /last HTTP/1.1", "app.example", ""}},
		},
		{
			name:     "upgrade to h2c among others",
			raw:      "GET / HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade\r\nUpgrade: H2C, websocket\r\n\r\n" + last,
			statuses: []int{200, 200},
			backend:  []parsedRequest{{"GET / HTTP/1.1", "app.example", ""}, {"GET /last HTTP/1.1", "app.example", ""}},
		},
		{
			name:     "upgrade to a protocol named in bytes beyond ASCII",
			raw:      "GET / HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade\r\nUpgrade: w\xe9bsocket\r\n\r\n" + last,
			statuses: []int{400},
		},
		{
			name:     "fragment",
			raw:      "GET /q?a=1#frag HTTP/1.1\r\nHost: app.example\r\n\r\n" + last,
			statuses: []int{400},
		},
		{
			name:     "bytes beyond ASCII in the target",
			raw:      "GET /q?a=\xc3\xa9 HTTP/1.1\r\nHost: app.example\r\n\r\n" + last,
			statuses: []int{400},
		},
		{
			name:     "printable ASCII RFC 3986 leaves out",
			raw:      "GET /q?x={1}|2^ HTTP/1.1\r\nHost: app.example\r\n\r\n" + last,
			statuses: []int{200, 200},
			backend:  []parsedRequest{{"GET /q?x={1}|2^ HTTP/1.1", "app.example", ""}, {"GET /last HTTP/1.1", "app.example", ""}},
		},
		{
			name:     "absolute form",
			raw:      "GET http://app.example/q?a=1 HTTP/1.1\r\nHost: app.example\r\n\r\n" + last,
			statuses: []int{200, 200},
			backend:  []parsedRequest{{"GET /q?a=1 HTTP/1.1", "app.example", ""}, {"GET /last HTTP/1.1", "app.example", ""}},
		},
		{
			// Forwarded, the scheme went and "admin" was the target.
			name:     "absolute form with an opaque part",
			raw:      "GET x:admin HTTP/1.1\r\nHost: app.example\r\n\r\n" + last,
			statuses: []int{400},
		},
		{
			// Routed on its first host, forwarded whole as
			// X-Forwarded-Host, whose last element many apps read.
			name:     "list of hosts",
			raw:      "GET / HTTP/1.1\r\nHost: app.example:443,evil.example\r\n\r\n" + last,
			statuses: []int{400},
		},
		{
			name:     "host and a port out of range",
			raw:      "GET / HTTP/1.1\r\nHost: app.example:99999\r\n\r\n" + last,
			statuses: []int{400},
		},
		{
			name:     "absolute form naming a list of hosts",
			raw:      "GET http://app.example,evil.example/ HTTP/1.1\r\nHost: app.example\r\n\r\n" + last,
			statuses: []int{400},
		},
		{
			name:     "IPv6 literal",
			raw:      "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n" + last,
			statuses: []int{200, 200},
			backend:  []parsedRequest{{"GET / HTTP/1.1", "[::1]:8080", ""}, {"GET /last HTTP/1.1", "app.example", ""}},
		},
		{
			// Forwarded, it became "GET /%2A".
			name:     "asterisk target of GET",
			raw:      "GET * HTTP/1.1\r\nHost: app.example\r\n\r\n" + last,
			statuses: []int{400},
		},
		{
			// The HTTP/2 preface, which net/http's HTTP/1 server passes
			// on as a request "PRI *" for a handler to switch.
			name:     "HTTP/2 preface",
			raw:      "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + last,
			statuses: []int{400},
		},
		{
			// Backends disagree on such names; any spelling a lenient
			// one might read as h2c is not one of a list of protocols.
			name:     "upgrade to h2c with a parameter",
			raw:      "GET / HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade\r\nUpgrade: h2c;\r\n\r\n" + last,
			statuses: []int{400},
		},
		{
			name:     "upgrade to a quoted h2c",
			raw:      "GET / HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade\r\nUpgrade: \"h2c\"\r\n\r\n" + last,
			statuses: []int{400},
		},
		{
			name:     "upgrade protocols separated by a space",
			raw:      "GET / HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade\r\nUpgrade: websocket h2c\r\n\r\n" + last,
			statuses: []int{400},
		},
		{
			// net/http joins the lines with a space.
			name:     "upgrade folded onto a second line",
			raw:      "GET / HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\th2c\r\n\r\n" + last,
			statuses: []int{400},
		},
		{
			name:     "upgrade to h2 c",
			raw:      "GET / HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade\r\nUpgrade: h2 c\r\n\r\n" + last,
			statuses: []int{400},
		},
		{
			name:     "upgrade to h2c with a version",
			raw:      "GET / HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade\r\nUpgrade: h2c/1.0\r\n\r\n" + last,
			statuses: []int{200, 200},
			backend:  []parsedRequest{{"GET / HTTP/1.1", "app.example", ""}, {"GET /last HTTP/1.1", "app.example", ""}},
		},
		{
			name:     "upgrade to a protocol named with h2c inside",
			raw:      "GET / HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade\r\nUpgrade: websocket, x-H2C-14\r\n\r\n" + last,
			statuses: []int{200, 200},
			backend:  []parsedRequest{{"GET / HTTP/1.1", "app.example", ""}, {"GET /last HTTP/1.1", "app.example", ""}},
		},
		{
			// Switched, the connection would carry HTTP requests too.
			name:     "upgrade to HTTP/2.0",
			raw:      "GET / HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade\r\nUpgrade: HTTP/2.0\r\n\r\n" + last,
			statuses: []int{200, 200},
			backend:  []parsedRequest{{"GET / HTTP/1.1", "app.example", ""}, {"GET /last HTTP/1.1", "app.example", ""}},
		},
		{
			name:     "upgrade to TLS",
			raw:      "GET / HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade\r\nUpgrade: TLS/1.2\r\n\r\n" + last,
			statuses: []int{200, 200},
			backend:  []parsedRequest{{"GET / HTTP/1.1", "app.example", ""}, {"GET /last HTTP/1.1", "app.example", ""}},
		},
		{
			// A list of protocols is forwarded as it came; the backend
			// here answers without switching.
			name:     "upgrade offering two protocols",
			raw:      "GET / HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade\r\nUpgrade: websocket/13 , x-other,\r\n\r\n" + last,
			statuses: []int{200, 200},
			backend:  []parsedRequest{{"GET / HTTP/1.1", "app.example", "websocket/13 , x-other,"}, {"GET /last HTTP/1.1", "app.example", ""}},
		},
		{
			name: "trailer named with a space",
			raw: "POST / HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\nTrailer: x y\r\n\r\n" +
				"5\r\nhello\r\n0\r\n\r\n" + last,
			statuses: []int{400},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lb := startLineBackend(t)
			_, u := startProxy(t, lineBackendConfig(t, lb), nil)
			var statuses []int
			for _, r := range rawExchange(t, u.Host, tt.raw) {
				statuses = append(statuses, r.StatusCode)
			}
			if !slices.Equal(statuses, tt.statuses) {
				t.Errorf("statuses %v, want %v", statuses, tt.statuses)
			}
			if got := lb.parsed(); !slices.Equal(got, tt.backend) {
				t.Errorf("backend parsed %+v, want %+v", got, tt.backend)
			}
		})
	}
}
