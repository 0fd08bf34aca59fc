package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// parsedRequest is what a lineBackend parsed of one request: its request
// line as it came, and the Host and Upgrade header values.
type parsedRequest struct {
	line, host, upgrade string
}

// lineBackend is an HTTP/1 backend that records every request it parses,
// the request line byte for byte, before it answers 200 "ok". It reads
// the way a lenient server does: whatever is on the connection after one
// request's body is the next request, so that a request smuggled inside
// another's bytes shows up as a request line of its own.
type lineBackend struct {
	*testutil.RawBackend
	mu   sync.Mutex
	seen []parsedRequest
	// whole are the requests whose body came in full, in order, with
	// their header fields: those a backend acts on.
	whole []wholeRequest
	// fields holds each request's header and trailer fields, as parsed.
	fields []requestFields
}

// wholeRequest is a request a lineBackend read to the end of its body.
type wholeRequest struct {
	line, body string
	header     textproto.MIMEHeader
}

// requestFields are the header and trailer fields of a request a
// lineBackend parsed; trailer is nil without a chunked body.
type requestFields struct {
	header, trailer textproto.MIMEHeader
}

func startLineBackend(t *testing.T) *lineBackend {
	t.Helper()
	lb := &lineBackend{}
	lb.RawBackend = testutil.StartRaw(t, lb.serve)
	return lb
}

func (lb *lineBackend) serve(c net.Conn, br *bufio.Reader) {
	tp := textproto.NewReader(br)
	for {
		line, err := tp.ReadLine()
		if err != nil {
			return
		}
		h, err := tp.ReadMIMEHeader()
		if err != nil {
			return
		}
		lb.mu.Lock()
		lb.seen = append(lb.seen, parsedRequest{line, h.Get("Host"), h.Get("Upgrade")})
		lb.fields = append(lb.fields, requestFields{header: h})
		i := len(lb.fields) - 1
		lb.mu.Unlock()
		var body io.Reader = http.NoBody
		length := int64(-1) // declared; -1 for none
		if strings.EqualFold(h.Get("Transfer-Encoding"), "chunked") {
			body = httputil.NewChunkedReader(br)
		} else if n, err := strconv.ParseInt(h.Get("Content-Length"), 10, 64); err == nil {
			body, length = io.LimitReader(br, n), n
		}
		b, err := io.ReadAll(body)
		if err != nil {
			return
		}
		if body != http.NoBody && h.Get("Content-Length") == "" {
			// The chunked body's trailer section, up to its empty line.
			trailer, err := tp.ReadMIMEHeader()
			if err != nil {
				return
			}
			lb.mu.Lock()
			lb.fields[i].trailer = trailer
			lb.mu.Unlock()
		}
		if int64(len(b)) < length {
			return // cut short
		}
		lb.mu.Lock()
		lb.whole = append(lb.whole, wholeRequest{line, string(b), h})
		lb.mu.Unlock()
		if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
			return
		}
	}
}

// parsed returns the requests parsed so far.
func (lb *lineBackend) parsed() []parsedRequest {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	return append([]parsedRequest(nil), lb.seen...)
}

// wholeRequests returns the requests read to their end so far.
func (lb *lineBackend) wholeRequests() []wholeRequest {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	return append([]wholeRequest(nil), lb.whole...)
}

// parsedFields returns the fields of the requests parsed so far.
func (lb *lineBackend) parsedFields() []requestFields {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	return append([]requestFields(nil), lb.fields...)
}

// h2Conn is an HTTP/2 client connection written frame by frame, which can
// send what no well-behaved client would: any pseudo-header, any value.
type h2Conn struct {
	t    *testing.T
	c    *tls.Conn
	fr   *http2.Framer
	enc  *hpack.Encoder
	buf  bytes.Buffer
	next uint32 // the next stream's ID
}

// h2Reply is how the proxy answered a stream: a response, or a reset of
// the stream or of the connection.
type h2Reply struct {
	status int // the final response's; 0 if none came
	body   string
	reset  bool // RST_STREAM or GOAWAY instead of (the end of) a response
	code   http2.ErrCode
}

// dialH2 opens an HTTP/2 connection to the TLS listener at addr and sends
// the client preface.
func dialH2(t *testing.T, addr string, cert testCert) *h2Conn {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: cert.roots, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("negotiated %q, want h2", p)
	}
	if err := c.SetDeadline(time.Now().Add(waitFor)); err != nil {
		t.Fatal(err)
	}
	h := &h2Conn{t: t, c: c, fr: http2.NewFramer(c, c), next: 1}
	h.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	h.enc = hpack.NewEncoder(&h.buf)
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := h.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return h
}

// field is one header field as sent, in order; pseudo-header fields too.
type field struct{ name, value string }

// request sends a stream of fields and, unless body is empty, one DATA
// frame of body, and reads the proxy's answer.
func (h *h2Conn) request(fields []field, body string) h2Reply {
	h.t.Helper()
	return h.stream(fields, body, true)
}

// stream is request, which leaves the stream open when end is false: the
// proxy answers before the client has sent all of its body.
func (h *h2Conn) stream(fields []field, body string, end bool) h2Reply {
	h.t.Helper()
	id := h.open()
	err := h.fr.WriteHeaders(http2.HeadersFrameParam{
		StreamID: id, BlockFragment: h.encode(fields), EndHeaders: true, EndStream: end && body == "",
	})
	if err == nil && body != "" {
		err = h.fr.WriteData(id, end, []byte(body))
	}
	if err != nil {
		h.t.Fatal(err)
	}
	return h.answer(id)
}

// open returns the ID of a new stream.
func (h *h2Conn) open() uint32 {
	id := h.next
	h.next += 2
	return id
}

// encode returns the header block of fields; it is valid until the next
// call.
func (h *h2Conn) encode(fields []field) []byte {
	h.t.Helper()
	h.buf.Reset()
	for _, f := range fields {
		if err := h.enc.WriteField(hpack.HeaderField{Name: f.name, Value: f.value}); err != nil {
			h.t.Fatal(err)
		}
	}
	return h.buf.Bytes()
}

// answer reads the proxy's answer on stream id, answering its SETTINGS
// and PINGs meanwhile.
func (h *h2Conn) answer(id uint32) h2Reply {
	h.t.Helper()
	var r h2Reply
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			h.t.Fatalf("stream %d: %v (answer so far %+v)", id, err, r)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				err = h.fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				err = h.fr.WritePing(true, f.Data)
			}
		case *http2.GoAwayFrame:
			r.reset, r.code = true, f.ErrCode
			return r
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				r.reset, r.code = true, f.ErrCode
				return r
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID != id {
				continue
			}
			if s, _ := strconv.Atoi(f.PseudoValue("status")); s >= 200 {
				r.status = s
			}
			if f.StreamEnded() {
				return r
			}
		case *http2.DataFrame:
			if f.StreamID != id {
				continue
			}
			r.body += string(f.Data())
			if f.StreamEnded() {
				return r
			}
		}
		if err != nil {
			h.t.Fatal(err)
		}
	}
}

// get is the fields of a well-formed request, with the given overrides
// (an empty value drops a field) and extra fields after.
func h2Fields(overrides map[string]string, extra ...field) []field {
	fs := []field{{":method", "GET"}, {":scheme", "https"}, {":authority", "app.example"}, {":path", "/"}}
	out := fs[:0]
	for _, f := range fs {
		if v, ok := overrides[f.name]; ok {
			if v == "" {
				continue
			}
			f.value = v
		}
		out = append(out, f)
	}
	for _, name := range []string{":protocol"} {
		if v, ok := overrides[name]; ok {
			out = append(out, field{name, v})
		}
	}
	return append(out, extra...)
}

// startH2Proxy serves cfg on a TLS listener and returns its address and
// certificate.
func startH2Proxy(t *testing.T, cfg *config.Config) (*Server, string, testCert) {
	t.Helper()
	cert := newTestCert(t)
	cfg.TLS = &config.TLS{Cert: cert.certFile, Key: cert.keyFile}
	s, u := startProxy(t, cfg, nil)
	return s, u.Host, cert
}

// lineBackendConfig is a config with one pool over lb, routed for every
// request.
func lineBackendConfig(t *testing.T, lb *lineBackend) *config.Config {
	t.Helper()
	u, err := url.Parse(lb.URL())
	if err != nil {
		t.Fatal(err)
	}
	return catchAll(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{{URL: u, Name: "a"}}})
}

// A request a client sends over HTTP/2 reaches the backend as exactly one
// HTTP/1 request, the one the proxy routed, or not at all: HTTP/2 CONNECT
// would otherwise forward the stream's bytes raw, for the backend to read
// as requests of their own.
func TestH2ConnectRefused(t *testing.T) {
	const smuggled = "POST /admin/delete-user?id=42 HTTP/1.1\r\nHost: admin.internal\r\n" +
		"X-Forwarded-For: 10.0.0.1\r\nContent-Length: 0\r\n\r\n"
	tests := []struct {
		name   string
		fields []field
		status int // the answer, unless the stream is reset
	}{
		{"CONNECT", h2Fields(map[string]string{":method": "CONNECT", ":scheme": "", ":path": "", ":authority": "admin.internal:80"}), 501},
		{"CONNECT to the proxy's own host", h2Fields(map[string]string{":method": "CONNECT", ":scheme": "", ":path": ""}), 501},
		// net/http resets it unless GODEBUG enables extended CONNECT;
		// the proxy refuses it either way.
		{"extended CONNECT", h2Fields(map[string]string{":method": "CONNECT", ":protocol": "websocket", ":path": "/chat"}), 501},
		// A connection-specific field, which net/http refuses.
		{"Upgrade", h2Fields(nil, field{"upgrade", "h2c"}), 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lb := startLineBackend(t)
			_, addr, cert := startH2Proxy(t, lineBackendConfig(t, lb))
			h := dialH2(t, addr, cert)
			r := h.request(tt.fields, smuggled)
			if !r.reset && r.status != tt.status {
				t.Errorf("answer %+v, want %d or a reset", r, tt.status)
			}
			// The connection still serves its other streams, and the
			// backend parses what they send, and only that.
			if r := h.request(h2Fields(nil), ""); r.status != http.StatusOK || r.body != "ok" {
				t.Fatalf("next stream: %+v, want the backend's 200", r)
			}
			want := []parsedRequest{{"GET / HTTP/1.1", "app.example", ""}}
			if got := lb.parsed(); !slices.Equal(got, want) {
				t.Errorf("backend parsed %+v, want %+v", got, want)
			}
		})
	}
}

// What a client sends over HTTP/2 reaches the backend written as HTTP/1.1
// the backend parses one way only, or is refused before anything is sent:
// a request target with bytes HTTP/1 does not allow there, an :authority
// (or Host) that is no host, a method that is no token, a trailer that is
// no field name. Bytes HTTP/1's grammar leaves out but that split no line
// (the printable ASCII RFC 3986 excludes, such as "{" and "|") pass as
// they came, as HAProxy passes them.
func TestH2RequestWrittenAsHTTP1(t *testing.T) {
	tests := []struct {
		name   string
		fields []field
		body   string
		status int  // the answer, unless reset
		reset  bool // net/http's HTTP/2 server resets the stream itself
		// open leaves the stream open after body: the answer comes
		// before the client has sent all of it.
		open bool
		// what the backend parses; nothing when the request is refused
		backend []parsedRequest
	}{
		{name: "well formed", fields: h2Fields(map[string]string{":path": "/a%20b/c?q=%23&r=1"}), status: 200,
			backend: []parsedRequest{{"GET /a%20b/c?q=%23&r=1 HTTP/1.1", "app.example", ""}}},
		{name: "space and HTTP version in :path", fields: h2Fields(map[string]string{":path": "/q?a=1 HTTP/1.1"}), status: 400},
		{name: "space in the path", fields: h2Fields(map[string]string{":path": "/a b"}), status: 400},
		{name: "fragment", fields: h2Fields(map[string]string{":path": "/q?a=1#frag"}), status: 400},
		{name: "fragment in the path", fields: h2Fields(map[string]string{":path": "/a#b"}), status: 400},
		{name: "bytes beyond ASCII", fields: h2Fields(map[string]string{":path": "/q?a=\xc3\xa9"}), status: 400},
		{name: "URI with an opaque part", fields: h2Fields(map[string]string{":path": "x:admin"}), status: 400},
		{name: "control character", fields: h2Fields(map[string]string{":path": "/q?a=\x01"}), reset: true},
		{name: "printable ASCII RFC 3986 leaves out", fields: h2Fields(map[string]string{":path": "/q?x={1}|2^`\\\"<>"}), status: 200,
			backend: []parsedRequest{{"GET /q?x={1}|2^`\\\"<> HTTP/1.1", "app.example", ""}}},

		{name: "authority with a port", fields: h2Fields(map[string]string{":authority": "app.example:8443"}), status: 200,
			backend: []parsedRequest{{"GET / HTTP/1.1", "app.example:8443", ""}}},
		{name: "authority of an IPv6 literal", fields: h2Fields(map[string]string{":authority": "[::1]:8443"}), status: 200,
			backend: []parsedRequest{{"GET / HTTP/1.1", "[::1]:8443", ""}}},
		{name: "space in :authority", fields: h2Fields(map[string]string{":authority": "evil.example x"}), status: 400},
		{name: "path in :authority", fields: h2Fields(map[string]string{":authority": "evil.example/x"}), status: 400},
		{name: "Host instead of :authority", fields: h2Fields(map[string]string{":authority": ""}, field{"host", "evil.example x"}), status: 400},
		{name: "userinfo in :authority", fields: h2Fields(map[string]string{":authority": "user@app.example"}), reset: true},
		// Routed on its first host, forwarded whole as X-Forwarded-Host,
		// whose last element many apps read.
		{name: "list of hosts", fields: h2Fields(map[string]string{":authority": "app.example:443,evil.example"}), status: 400},
		{name: "list of hosts, empty port", fields: h2Fields(map[string]string{":authority": "app.example:,evil.example"}), status: 400},
		{name: "host and parameter", fields: h2Fields(map[string]string{":authority": "app.example;evil"}), status: 400},
		{name: "percent-encoded host", fields: h2Fields(map[string]string{":authority": "app%2eexample"}), status: 400},
		{name: "port out of range", fields: h2Fields(map[string]string{":authority": "app.example:99999"}), status: 400},
		{name: "port not a number", fields: h2Fields(map[string]string{":authority": "app.example:abc"}), status: 400},
		{name: "two ports", fields: h2Fields(map[string]string{":authority": "app.example:1:2"}), status: 400},
		{name: "IPv6 literal without brackets", fields: h2Fields(map[string]string{":authority": "::1"}), status: 400},
		{name: "IPv6 literal with a zone", fields: h2Fields(map[string]string{":authority": "[fe80::1%25eth0]:80"}), status: 400},
		{name: "IPv4 with a port", fields: h2Fields(map[string]string{":authority": "127.0.0.1:8080"}), status: 200,
			backend: []parsedRequest{{"GET / HTTP/1.1", "127.0.0.1:8080", ""}}},
		{name: "upper case and a trailing dot", fields: h2Fields(map[string]string{":authority": "App.Example.:443"}), status: 200,
			backend: []parsedRequest{{"GET / HTTP/1.1", "App.Example.:443", ""}}},

		// Go's server takes a content-length it cannot parse as 0, and
		// the body would be dropped: the backend ran the POST without it.
		// The stream stays open, its body unsent, so that the answer is
		// the proxy's and not the reset a DATA frame past the length
		// draws from Go's server.
		{name: "content-length not a number", fields: h2Fields(map[string]string{":method": "POST"}, field{"content-length", "abc"}),
			open: true, status: 400},
		{name: "negative content-length", fields: h2Fields(map[string]string{":method": "POST"}, field{"content-length", "-1"}),
			open: true, status: 400},
		{name: "signed content-length", fields: h2Fields(map[string]string{":method": "POST"}, field{"content-length", "+8"}),
			open: true, status: 400},
		{name: "content-length and a space", fields: h2Fields(map[string]string{":method": "POST"}, field{"content-length", "8 "}),
			open: true, status: 400},
		{name: "hexadecimal content-length", fields: h2Fields(map[string]string{":method": "POST"}, field{"content-length", "0x8"}),
			open: true, status: 400},
		{name: "content-length beyond int64", fields: h2Fields(map[string]string{":method": "POST"}, field{"content-length", "99999999999999999999"}),
			open: true, status: 400},
		{name: "two content-lengths", fields: h2Fields(map[string]string{":method": "POST"}, field{"content-length", "8"}, field{"content-length", "10"}),
			open: true, status: 400},
		{name: "content-length and no body", fields: h2Fields(map[string]string{":method": "POST"}, field{"content-length", "8"}), status: 400},
		{name: "content-length", fields: h2Fields(map[string]string{":method": "POST"}, field{"content-length", "8"}),
			body: "amount=5", status: 200, backend: []parsedRequest{{"POST / HTTP/1.1", "app.example", ""}}},
		{name: "identical content-lengths", fields: h2Fields(map[string]string{":method": "POST"}, field{"content-length", "8"}, field{"content-length", "8"}),
			body: "amount=5", status: 200, backend: []parsedRequest{{"POST / HTTP/1.1", "app.example", ""}}},

		// The asterisk form is OPTIONS's alone, which the proxy answers
		// itself, as net/http would; forwarded, GET * became "GET /%2A".
		{name: "asterisk target of GET", fields: h2Fields(map[string]string{":path": "*"}), status: 400},
		{name: "OPTIONS *", fields: h2Fields(map[string]string{":method": "OPTIONS", ":path": "*"}), status: 200},

		{name: "method with a path", fields: h2Fields(map[string]string{":method": "GET /admin"}), status: 400},
		{name: "method with a slash", fields: h2Fields(map[string]string{":method": "GET/admin"}), status: 400},
		{name: "lower-case method, a token", fields: h2Fields(map[string]string{":method": "get"}), status: 200,
			backend: []parsedRequest{{"get / HTTP/1.1", "app.example", ""}}},
		{name: "trailer named with a space", fields: h2Fields(map[string]string{":method": "POST"}, field{"trailer", "x y"}),
			body: "hello", status: 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lb := startLineBackend(t)
			_, addr, cert := startH2Proxy(t, lineBackendConfig(t, lb))
			r := dialH2(t, addr, cert).stream(tt.fields, tt.body, !tt.open)
			switch {
			case tt.reset && !r.reset:
				t.Errorf("answer %+v, want the stream reset", r)
			case !tt.reset && (r.reset || r.status != tt.status):
				t.Errorf("answer %+v, want %d", r, tt.status)
			}
			if got := lb.parsed(); !slices.Equal(got, tt.backend) {
				t.Errorf("backend parsed %+v, want %+v", got, tt.backend)
			}
		})
	}
}

// A request the proxy cannot forward is the client's fault: answered 400
// before a backend is picked, it ejects none and counts for none. Nine
// requests with an invalid method used to eject two of three healthy
// backends, moving every client pinned there.
func TestClientFaultsEjectNoBackend(t *testing.T) {
	pc := poolOf("web", "cookie", cookieOptions(), startBackends(t, "a", "b", "c")...)
	passive := config.DefaultPassive()
	pc.Passive = &passive
	log, logs := observed()
	cert := newTestCert(t)
	cfg := catchAll(pc)
	cfg.TLS = &config.TLS{Cert: cert.certFile, Key: cert.keyFile}
	s, u := startProxy(t, cfg, log)
	h := dialH2(t, u.Host, cert)
	faults := [][]field{
		h2Fields(map[string]string{":method": "GET /admin"}),
		h2Fields(map[string]string{":method": "POST"}, field{"trailer", "x y"}),
		h2Fields(map[string]string{":authority": "app.example/admin"}),
	}
	const rounds = 3
	for range rounds {
		for _, fs := range faults {
			if r := h.request(fs, "x"); r.status != http.StatusBadRequest {
				t.Errorf("%v: answer %+v, want 400", fs, r)
			}
		}
	}
	p := s.state.Load().pools[0]
	if got := available(p); len(got) != 3 {
		t.Errorf("available %v, want all three", got)
	}
	if n := len(entries(logs, "backend ejected")) + len(entries(logs, "backend request failed")); n != 0 {
		t.Errorf("%d ejections and failures logged, want none", n)
	}
	for _, b := range p.backends {
		if n := statsOf(b).requests(); n != 0 {
			t.Errorf("backend %s counted %d requests, want none", b.ID, n)
		}
	}
	if n := s.stats.rejected.Load(); n != rounds*uint64(len(faults)) {
		t.Errorf("%d requests counted rejected, want %d", n, rounds*len(faults))
	}
}
