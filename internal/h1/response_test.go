package h1

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"reflect"
	"strings"
	"testing"

	"github.com/affinityproxy/affinity/internal/testutil"
	"golang.org/x/net/http/httpguts"
)

// nginxHead is what the peer harness's nginx backends answer.
const nginxHead = "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 01 Dec 2026 22:40:07 GMT\r\n" +
	"Content-Type: application/octet-stream\r\nContent-Length: 2\r\nConnection: keep-alive\r\nX-Served-By: b1\r\n\r\n"

// bufferedReader is a reader of raw as h1Conn's: 4 KiB of buffer, filled
// by a first read as exchange's Peek does.
func bufferedReader(raw string) *bufio.Reader {
	br := bufio.NewReaderSize(strings.NewReader(raw), 4<<10)
	_, _ = br.Peek(1)
	return br
}

// sameAsReadResponse parses raw, the response to a method request, with
// parseResponse and with http.ReadResponse, each from a reader of its own,
// and fails t where they differ: in the response, in every read of its body
// (the bytes, and the error each read returns), or in what is left to read
// after it. A head parseResponse leaves must be left unread. It reports
// whether parseResponse took the head.
func sameAsReadResponse(t *testing.T, method, raw string) bool {
	t.Helper()
	req := &http.Request{Method: method}
	fastBR, wantBR := bufferedReader(raw), bufferedReader(raw)
	pr := parseResponse(fastBR, req)
	if pr == nil {
		if rest, _ := io.ReadAll(fastBR); string(rest) != raw {
			t.Errorf("parseResponse declined %q but read from it", raw)
		}
		return false
	}
	fast := &pr.res
	want, err := http.ReadResponse(wantBR, req)
	if err != nil {
		t.Errorf("parseResponse took %q, which ReadResponse refuses: %v", raw, err)
		return true
	}
	if got, want := responseFields(fast), responseFields(want); got != want {
		t.Errorf("response to %q:\nparseResponse %s\nReadResponse  %s", raw, got, want)
	}
	if !reflect.DeepEqual(fast.Header, want.Header) {
		t.Errorf("header of %q:\nparseResponse %q\nReadResponse  %q", raw, fast.Header, want.Header)
	}
	if (fast.Body == http.NoBody) != (want.Body == http.NoBody) {
		t.Errorf("body of %q: parseResponse %T, ReadResponse %T", raw, fast.Body, want.Body)
	}
	if got, want := bodyReads(fast.Body), bodyReads(want.Body); got != want {
		t.Errorf("body of %q read:\nparseResponse %s\nReadResponse  %s", raw, got, want)
	}
	gotRest, _ := io.ReadAll(fastBR)
	wantRest, _ := io.ReadAll(wantBR)
	if !bytes.Equal(gotRest, wantRest) {
		t.Errorf("after %q: parseResponse leaves %q, ReadResponse %q", raw, gotRest, wantRest)
	}
	return true
}

func responseFields(r *http.Response) string {
	return fmt.Sprintf("status %q %d, proto %q %d.%d, length %d, close %t, te %q, trailer %v, request %p",
		r.Status, r.StatusCode, r.Proto, r.ProtoMajor, r.ProtoMinor, r.ContentLength, r.Close,
		r.TransferEncoding, r.Trailer, r.Request)
}

// bodyReads reads body to its end in reads of 3 bytes and lists what each
// returned.
func bodyReads(body io.Reader) string {
	var sb strings.Builder
	p := make([]byte, 3)
	for i := 0; i < 100; i++ {
		n, err := body.Read(p)
		fmt.Fprintf(&sb, "[%q %v]", p[:n], err)
		if err != nil {
			break
		}
	}
	return sb.String()
}

func TestParseResponse(t *testing.T) {
	tests := []struct {
		name   string
		method string
		raw    string
		takes  bool // parseResponse parses it rather than leave it to ReadResponse
	}{
		{"nginx", "GET", nginxHead + "b1", true},
		{"nginx, then the next response", "GET", nginxHead + "b1HTTP/1.1 200 OK\r\n", true},
		{"body not all buffered yet", "GET", nginxHead + "b", true},
		{"empty body", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true},
		{"no reason", "GET", "HTTP/1.1 404\r\nContent-Length: 1\r\n\r\nx", true},
		{"reason with spaces", "GET", "HTTP/1.1 503 Service  Unavailable \r\nContent-Length: 1\r\n\r\nx", true},
		{"names to canonicalise", "GET", "HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-SERVED-by: b2\r\nset-cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nabc", true},
		{"values trimmed, empty value", "GET", "HTTP/1.1 200 OK\r\nA: \t x y \t\r\nB:\r\nC:z\r\nContent-Length:  2 \r\n\r\nab", true},
		{"obs-text value", "GET", "HTTP/1.1 200 OK\r\nX: caf\xc3\xa9\r\nContent-Length: 1\r\n\r\nx", true},
		{"connection close", "GET", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx", true},
		{"connection close among others", "GET", "HTTP/1.1 200 OK\r\nConnection: Upgrade, Close\r\nContent-Length: 1\r\n\r\nx", true},
		{"connection keep-alive", "GET", "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx", true},
		{"204 without length", "GET", "HTTP/1.1 204 No Content\r\nX: y\r\n\r\n", true},
		{"304 with a length", "GET", "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", true},
		{"leading zeros in length", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 01\r\n\r\nx", true},
		{"body cut short", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", true},
		{"OPTIONS", "OPTIONS", "HTTP/1.1 200 OK\r\nAllow: GET\r\nContent-Length: 0\r\n\r\n", true},

		{"HEAD", "HEAD", nginxHead, false},
		{"head not all buffered", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n", false},
		{"HTTP/1.0", "GET", "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", false},
		{"HTTP/2", "GET", "HTTP/2.0 200 OK\r\nContent-Length: 1\r\n\r\nx", false},
		{"informational", "GET", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false},
		{"status 600", "GET", "HTTP/1.1 600 X\r\nContent-Length: 0\r\n\r\n", false},
		{"four-digit status", "GET", "HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", false},
		{"letters in status", "GET", "HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n", false},
		{"two spaces before status", "GET", "HTTP/1.1  200 OK\r\nContent-Length: 0\r\n\r\n", false},
		{"bare CR in reason", "GET", "HTTP/1.1 200 O\rK\r\nContent-Length: 0\r\n\r\n", false},
		{"bare LF ends a line", "GET", "HTTP/1.1 200 OK\r\nA: b\nContent-Length: 0\r\n\r\n", false},
		{"bare LF ends the head", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 1\n\nxHTTP/1.1 200 OK\r\n\r\n", false},
		{"chunked", "GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n", false},
		{"chunked and a length", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false},
		{"trailer", "GET", "HTTP/1.1 200 OK\r\nTrailer: X\r\nContent-Length: 1\r\n\r\nx", false},
		{"pragma", "GET", "HTTP/1.1 200 OK\r\nPragma: no-cache\r\nContent-Length: 1\r\n\r\nx", false},
		{"no length", "GET", "HTTP/1.1 200 OK\r\nX: y\r\n\r\nto the end", false},
		{"two lengths", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", false},
		{"empty length", "GET", "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n", false},
		{"signed length", "GET", "HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nx", false},
		{"huge length", "GET", "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n", false},
		{"folded line", "GET", "HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n", false},
		{"space before colon", "GET", "HTTP/1.1 200 OK\r\nX : a\r\nContent-Length: 0\r\n\r\n", false},
		{"no colon", "GET", "HTTP/1.1 200 OK\r\nX\r\nContent-Length: 0\r\n\r\n", false},
		{"empty name", "GET", "HTTP/1.1 200 OK\r\n: a\r\nContent-Length: 0\r\n\r\n", false},
		{"control byte in value", "GET", "HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n", false},
		{"DEL in value", "GET", "HTTP/1.1 200 OK\r\nX: a\x7fb\r\nContent-Length: 0\r\n\r\n", false},
		{"non-token name", "GET", "HTTP/1.1 200 OK\r\nX(y): a\r\nContent-Length: 0\r\n\r\n", false},
		{"nothing", "GET", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if took := sameAsReadResponse(t, tt.method, tt.raw); took != tt.takes {
				t.Errorf("parseResponse took it: %t, want %t", took, tt.takes)
			}
		})
	}
}

// TestCanonicalName compares canonicalName with what it stands for, on
// names and on every byte at every place of a short name.
func TestCanonicalName(t *testing.T) {
	names := []string{"", "a", "A", "-", "Content-Type", "content-type", "CONTENT-TYPE", "X-Served-By",
		"WWW-Authenticate", "x-1a", "X-1A", "a--b", "Ab-", "Set-Cookie", "x_y", "X y", "é"}
	for c := 0; c < 256; c++ {
		for _, base := range []string{"Ab-C", "ab-c", "AB-C"} {
			for pos := range len(base) {
				b := []byte(base)
				b[pos] = byte(c)
				names = append(names, string(b))
			}
		}
	}
	for _, name := range names {
		got, ok := canonicalName(name)
		wantOK := httpguts.ValidHeaderFieldName(name)
		if ok != wantOK || (ok && got != textproto.CanonicalMIMEHeaderKey(name)) {
			t.Errorf("canonicalName(%q) = %q, %t; want %q, %t", name, got, ok, textproto.CanonicalMIMEHeaderKey(name), wantOK)
		}
	}
}

// TestReadResponseLongHead: a head longer than the buffer goes to
// ReadResponse, which reads on past it.
func TestReadResponseLongHead(t *testing.T) {
	raw := "HTTP/1.1 200 OK\r\nX: " + strings.Repeat("v", 5000) + "\r\nContent-Length: 1\r\n\r\nx"
	if sameAsReadResponse(t, "GET", raw) {
		t.Error("parseResponse took a head longer than its buffer")
	}
	res, wrap, err := readResponse(bufferedReader(raw), &http.Request{Method: "GET"})
	if err != nil || len(res.Header.Get("X")) != 5000 || wrap != nil {
		t.Fatalf("readResponse: %v", err)
	}
}

func FuzzParseResponse(f *testing.F) {
	f.Add("GET", nginxHead+"b1")
	f.Add("GET", "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
	f.Add("HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n")
	f.Add("GET", "HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-a: \t b \r\n\r\nab")
	for _, h := range testutil.HostileResponses(f) {
		f.Add("GET", h.Raw)
		f.Add("HEAD", h.Raw)
	}
	f.Fuzz(func(t *testing.T, method, raw string) {
		sameAsReadResponse(t, method, raw)
	})
}

// BenchmarkReadResponse reads nginx's response head as Client does and
// with http.ReadResponse.
func BenchmarkReadResponse(b *testing.B) {
	raw := nginxHead + "b1"
	req := &http.Request{Method: http.MethodGet}
	src := strings.NewReader(raw)
	br := bufio.NewReaderSize(src, 4<<10)
	for _, bc := range []struct {
		name string
		read func(*bufio.Reader, *http.Request) (*http.Response, error)
	}{{"parseResponse", func(br *bufio.Reader, r *http.Request) (*http.Response, error) {
		// With the respBody the exchange wraps the body in, allocated along.
		res, _, err := readResponse(br, r)
		return res, err
	}}, {"ReadResponse", http.ReadResponse}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				src.Reset(raw)
				br.Reset(src)
				_, _ = br.Peek(1) // as exchange does
				res, err := bc.read(br, req)
				if err != nil || res.StatusCode != 200 {
					b.Fatal(err)
				}
			}
		})
	}
}
