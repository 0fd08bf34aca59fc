package proxy

import (
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/affinityproxy/affinity/config"
)

// seen is a request a backend read to its end: its request line and body.
type seen struct{ line, body string }

// TestRequestSmuggling sends framing attacks over raw TCP to a real
// listener, each followed by a request of its own, and asserts what a
// backend on raw sockets read to its end, and whether the connection went
// on. The proxy routes only /public/ to the backend. Each attempt is either
//
//   - refused by net/http (400, 501 for a transfer coding it does not
//     implement, 431, 505, 417) with nothing forwarded and the connection
//     closed;
//   - read one way, forwarded re-framed, and answered, and the connection
//     then closed when another reader (a proxy in front) might frame it
//     another way: a chunked request (with a Content-Length too, RFC 9112
//     6.3; or chunk syntax read otherwise) or HTTP/1.0 (whose
//     Transfer-Encoding net/http ignores, RFC 9112 6.1). What followed it
//     is never read as a request, even when a route answers 404 or the
//     proxy answers "OPTIONS *" itself;
//   - or read one way that leaves nothing in doubt, where the next request
//     on the connection is served too.
func TestRequestSmuggling(t *testing.T) {
	// smuggled is routed: should it ever be read as a request, the
	// backend would show it.
	const smuggled = "GET /public/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
	// last closes the connection, so that reading ends without a timeout,
	// once it is served; a request before it that closes the connection
	// must leave it unanswered.
	const last = "GET /public/last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
	chunk := func(s string) string { return strconv.FormatInt(int64(len(s)), 16) + "\r\n" + s + "\r\n" }
	lastSeen := seen{"GET /public/last HTTP/1.1", ""}
	tests := []struct {
		name string
		raw  string
		// statuses of the responses, in order, until the connection
		// closed.
		statuses []int
		// the requests the backend read to their end, in order.
		backend []seen
		// field holds the value a header field of the first request
		// reached the backend with, when the test names one.
		field, value string
	}{
		// Read one way, answered, the connection closed.
		{
			// CL.TE: a front trusting Content-Length would forward all of
			// it as one body; the chunked body ends at "0".
			name: "Content-Length and Transfer-Encoding, body ends early",
			raw: "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n" +
				"0\r\n\r\n" + smuggled + last,
			statuses: []int{200},
			backend:  []seen{{"POST /public/a HTTP/1.1", ""}},
		},
		{
			// TE.CL: the smuggled request is data inside the chunked body,
			// forwarded as data.
			name: "Content-Length and Transfer-Encoding, request inside the body",
			raw: "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" +
				chunk(smuggled) + "0\r\n\r\n" + last,
			statuses: []int{200},
			backend:  []seen{{"POST /public/a HTTP/1.1", smuggled}},
		},
		{
			name: "Transfer-Encoding before Content-Length",
			raw: "POST /public/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n" +
				chunk("hello") + "0\r\n\r\n" + smuggled + last,
			statuses: []int{200},
			backend:  []seen{{"POST /public/a HTTP/1.1", "hello"}},
		},
		{
			name:     "chunked",
			raw:      "POST /public/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk("hello") + "0\r\n\r\n" + smuggled + last,
			statuses: []int{200},
			backend:  []seen{{"POST /public/a HTTP/1.1", "hello"}},
		},
		{
			// Leading whitespace is not part of a field value, nor case
			// part of a coding's name: this is plain chunked.
			name: "Transfer-Encoding spelled with a leading space and capitals",
			raw: "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding:    Chunked\r\n\r\n" +
				chunk("hello") + "0\r\n\r\n" + smuggled + last,
			statuses: []int{200},
			backend:  []seen{{"POST /public/a HTTP/1.1", "hello"}},
		},
		{
			name: "chunk extensions",
			raw: "POST /public/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
				"5;a=b;c=\"d\"\r\nhello\r\n0;e\r\n\r\n" + smuggled + last,
			statuses: []int{200},
			backend:  []seen{{"POST /public/a HTTP/1.1", "hello"}},
		},
		{
			name: "chunked with a trailer",
			raw: "POST /public/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
				chunk("hello") + "0\r\nX-Checksum: 1\r\n\r\n" + smuggled + last,
			statuses: []int{200},
			backend:  []seen{{"POST /public/a HTTP/1.1", "hello"}},
		},
		{
			// No route: answered 404, the body left unread.
			name: "Content-Length and Transfer-Encoding, not routed",
			raw: "POST /private/a HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n" +
				"0\r\n\r\n" + smuggled + last,
			statuses: []int{404},
		},
		{
			// net/http's own handler for OPTIONS * read the body and went
			// on to the smuggled request.
			name: "Content-Length and Transfer-Encoding, OPTIONS *",
			raw: "OPTIONS * HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n" +
				"0\r\n\r\n" + smuggled + last,
			statuses: []int{200},
		},
		{
			// HTTP/1.0 has no chunked coding: net/http ignores the
			// header, takes Content-Length, and without the close would
			// have kept the connection the client asked to keep.
			name: "Transfer-Encoding in HTTP/1.0 keep-alive",
			raw: "POST /public/a HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" +
				"hello" + smuggled + last,
			statuses: []int{200},
			backend:  []seen{{"POST /public/a HTTP/1.1", "hello"}},
		},
		{
			// Without Content-Length the body is empty for net/http; a
			// reader taking the coding would frame the chunk as the body.
			name: "Transfer-Encoding in HTTP/1.0 keep-alive, no Content-Length",
			raw: "POST /public/a HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n" +
				chunk(smuggled) + "0\r\n\r\n" + last,
			statuses: []int{200},
			backend:  []seen{{"POST /public/a HTTP/1.1", ""}},
		},
		{
			name:     "Transfer-Encoding in HTTP/1.0",
			raw:      "POST /public/a HTTP/1.0\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello" + smuggled + last,
			statuses: []int{200},
			backend:  []seen{{"POST /public/a HTTP/1.1", "hello"}},
		},
		{
			name:     "HTTP/1.0 keep-alive",
			raw:      "GET /public/a HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n" + last,
			statuses: []int{200},
			backend:  []seen{{"GET /public/a HTTP/1.1", ""}},
		},
		{
			name:     "Transfer-Encoding in HTTP/1.0 keep-alive, OPTIONS *",
			raw:      "OPTIONS * HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n" + smuggled + last,
			statuses: []int{200},
		},

		// Refused by net/http, the connection closed.
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
			name:     "Content-Length folded onto a second line",
			raw:      "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n 0\r\n\r\nhello" + smuggled + last,
			statuses: []int{400},
		},
		{
			name:     "Transfer-Encoding chunked, identity",
			raw:      "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked, identity\r\n\r\nhello" + smuggled + last,
			statuses: []int{501},
		},
		{
			name:     "Transfer-Encoding identity",
			raw:      "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: identity\r\n\r\nhello" + smuggled + last,
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
			name:     "tab before the colon",
			raw:      "GET /public/a HTTP/1.1\r\nHost: x\r\nX-A\t: 1\r\n\r\n" + smuggled + last,
			statuses: []int{400},
		},
		{
			name:     "Transfer-Encoding folded onto a second line",
			raw:      "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding:\r\n chunked\r\n\r\nhello" + smuggled + last,
			statuses: []int{400},
		},
		{
			name:     "a field line folded onto the request line",
			raw:      "GET /public/a HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: x\r\n\r\n" + smuggled + last,
			statuses: []int{400},
		},
		{
			name:     "bare LF line ends, Content-Length and Transfer-Encoding",
			raw:      "POST /public/a HTTP/1.1\nHost: x\nContent-Length: 5\nTransfer-Encoding: chunked\n\n0\n\n" + smuggled + last,
			statuses: []int{400},
		},
		{
			name:     "bare CR in a field",
			raw:      "GET /public/a HTTP/1.1\r\nHost: x\r\nX-A: 1\rTransfer-Encoding: chunked\r\n\r\n" + smuggled + last,
			statuses: []int{400},
		},
		{
			name:     "NUL in a field value",
			raw:      "GET /public/a HTTP/1.1\r\nHost: x\r\nX-A: 1\x00\r\n\r\n" + smuggled + last,
			statuses: []int{400},
		},
		{
			name:     "NUL in a field name",
			raw:      "GET /public/a HTTP/1.1\r\nHost: x\r\nX\x00A: 1\r\n\r\n" + smuggled + last,
			statuses: []int{400},
		},
		{
			name:     "NUL in the request line",
			raw:      "GET /public/a\x00 HTTP/1.1\r\nHost: x\r\n\r\n" + smuggled + last,
			statuses: []int{400},
		},
		{
			name:     "two Host fields",
			raw:      "GET /public/a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n" + smuggled + last,
			statuses: []int{400},
		},
		{
			name:     "head over max_header_bytes",
			raw:      "GET /public/a HTTP/1.1\r\nHost: x\r\nX-A: " + strings.Repeat("a", 64<<10) + "\r\n\r\n" + smuggled + last,
			statuses: []int{431},
		},
		{
			name:     "HTTP/0.9",
			raw:      "GET /public/a\r\n\r\n" + smuggled + last,
			statuses: []int{400},
		},
		{
			name:     "HTTP/2.0 in an HTTP/1 request line",
			raw:      "GET /public/a HTTP/2.0\r\nHost: x\r\n\r\n" + smuggled + last,
			statuses: []int{505},
		},
		{
			name:     "expectation other than 100-continue",
			raw:      "POST /public/a HTTP/1.1\r\nHost: x\r\nExpect: 100-continuex\r\nContent-Length: 5\r\n\r\nhello" + smuggled + last,
			statuses: []int{417},
		},

		// Forwarded, then the body found malformed: the backend's
		// request is cut, the client answered 400, the connection closed.
		{
			name: "chunk size overflowing 64 bits",
			raw: "POST /public/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
				"10000000000000005\r\nhello\r\n0\r\n\r\n" + smuggled + last,
			statuses: []int{400},
		},
		{
			name:     "chunk size in hex notation",
			raw:      "POST /public/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n" + smuggled + last,
			statuses: []int{400},
		},
		{
			name:     "chunk size with a bare LF",
			raw:      "POST /public/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n" + smuggled + last,
			statuses: []int{400},
		},
		{
			name:     "chunk extension with a bare LF",
			raw:      "POST /public/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n" + smuggled + last,
			statuses: []int{400},
		},
		{
			name:     "chunk longer than its size",
			raw:      "POST /public/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n" + smuggled + last,
			statuses: []int{400},
		},

		// Nothing in doubt: the next request is served.
		{
			// RFC 9110 (8.6) lets a recipient merge identical values.
			name:     "duplicate identical Content-Length",
			raw:      "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello" + last,
			statuses: []int{200, 200},
			backend:  []seen{{"POST /public/a HTTP/1.1", "hello"}, lastSeen},
		},
		{
			name:     "Content-Length with leading zeros and trailing space",
			raw:      "POST /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 005 \r\n\r\nhello" + last,
			statuses: []int{200, 200},
			backend:  []seen{{"POST /public/a HTTP/1.1", "hello"}, lastSeen},
		},
		{
			name:     "GET with a body",
			raw:      "GET /public/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" + last,
			statuses: []int{200, 200},
			backend:  []seen{{"GET /public/a HTTP/1.1", "hello"}, lastSeen},
		},
		{
			name:     "100-continue",
			raw:      "POST /public/a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello" + last,
			statuses: []int{100, 200, 200},
			backend:  []seen{{"POST /public/a HTTP/1.1", "hello"}, lastSeen},
		},
		{
			// RFC 9112 (5.2) lets a server replace obs-fold with spaces,
			// as net/http does; the backend reads one field, unfolded.
			name:     "field folded onto a second line",
			raw:      "GET /public/a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\t2\r\n\r\n" + last,
			statuses: []int{200, 200},
			backend:  []seen{{"GET /public/a HTTP/1.1", ""}, lastSeen},
			field:    "X-A", value: "1 2",
		},
		{
			// A fold is never a field of its own: this has no
			// Transfer-Encoding for net/http, nor for the backend.
			name:     "Transfer-Encoding folded into another field",
			raw:      "GET /public/a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n" + last,
			statuses: []int{200, 200},
			backend:  []seen{{"GET /public/a HTTP/1.1", ""}, lastSeen},
			field:    "X-A", value: "1 Transfer-Encoding: chunked",
		},
		{
			// RFC 9112 (2.2) lets a recipient take a bare LF for a line
			// end, as net/http does, and nginx and HAProxy; the backend
			// reads CRLF.
			name:     "bare LF line ends",
			raw:      "POST /public/a HTTP/1.1\nHost: x\nX-A: 1\nContent-Length: 5\n\nhello" + last,
			statuses: []int{200, 200},
			backend:  []seen{{"POST /public/a HTTP/1.1", "hello"}, lastSeen},
			field:    "X-A", value: "1",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lb := startLineBackend(t)
			cfg := lineBackendConfig(t, lb)
			cfg.Routes = []config.Route{{Match: config.Match{Path: "/public/"}, Pool: "web"}}
			cfg.Server.MaxHeaderBytes = 8 << 10
			_, u := startProxy(t, cfg, nil)

			// rawExchange fails unless the connection closes.
			var statuses []int
			for _, r := range rawExchange(t, u.Host, tt.raw) {
				statuses = append(statuses, r.StatusCode)
			}
			if !slices.Equal(statuses, tt.statuses) {
				t.Errorf("statuses %v, want %v", statuses, tt.statuses)
			}
			for _, r := range lb.parsed() {
				if strings.Contains(r.line, "/public/smuggled") {
					t.Fatalf("a smuggled request reached the backend: %+v", r)
				}
			}
			whole := lb.wholeRequests()
			got := make([]seen, len(whole))
			for i, r := range whole {
				got[i] = seen{r.line, r.body}
			}
			if !slices.Equal(got, tt.backend) {
				t.Errorf("backend read %+v, want %+v", got, tt.backend)
			}
			if tt.field != "" && len(whole) > 0 {
				if v := whole[0].header[tt.field]; !slices.Equal(v, []string{tt.value}) {
					t.Errorf("backend read %s %q, want %q", tt.field, v, tt.value)
				}
				if v, ok := whole[0].header["Transfer-Encoding"]; ok {
					t.Errorf("backend read Transfer-Encoding %q", v)
				}
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
