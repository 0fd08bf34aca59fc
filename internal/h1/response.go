package h1

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// readResponse reads the head of the response to r from br, as
// http.ReadResponse does. The common head, already whole in br's buffer,
// is parsed by parseResponse in one pass and one copy; anything else goes
// to http.ReadResponse. For a parsed response it also returns the respBody
// allocated with it, for the exchange to wrap the body in.
func readResponse(br *bufio.Reader, r *http.Request) (*http.Response, *respBody, error) {
	if pr := parseResponse(br, r); pr != nil {
		return &pr.res, &pr.wrap, nil
	}
	length := declaresLength(br)
	res, err := http.ReadResponse(br, r)
	if err == nil && length && len(res.TransferEncoding) > 0 {
		// Framed two ways: http.ReadResponse reads the body as chunked
		// and drops the Content-Length, as RFC 9112 §6.3 says, but keeps
		// the connection, where the RFC says to close it after: a
		// backend whose framing is in doubt leaves the next response on
		// it in doubt too. HAProxy and nginx close it; so does this
		// client, unlike http.Transport.
		res.Close = true
	}
	return res, nil, err
}

// declaresLength reports whether the head at the start of br, which
// http.ReadResponse is to read next, has a Content-Length field, or may
// have one: a head larger than br's buffer is not looked at, and reported
// as having one (a chunked response with such a head costs its connection).
// It reads no further than the head's end, as http.ReadResponse would.
func declaresLength(br *bufio.Reader) bool {
	for {
		buf, _ := br.Peek(br.Buffered())
		if end := bytes.Index(buf, []byte("\n\r\n")); end >= 0 {
			return hasField(buf[:end+1], "content-length:")
		}
		if end := bytes.Index(buf, []byte("\n\n")); end >= 0 {
			return hasField(buf[:end+1], "content-length:")
		}
		if br.Buffered() == br.Size() {
			return true
		}
		if _, err := br.Peek(br.Buffered() + 1); err != nil {
			return false // http.ReadResponse fails on the same error
		}
	}
}

// hasField reports whether a line of head, after the first, starts with
// prefix, a lower-case field name and its colon, in any case.
func hasField(head []byte, prefix string) bool {
	for {
		i := bytes.IndexByte(head, '\n')
		if i < 0 {
			return false
		}
		head = head[i+1:]
		if len(head) >= len(prefix) && strings.EqualFold(string(head[:len(prefix)]), prefix) {
			return true
		}
	}
}

// parsedResponse is what parseResponse allocates at once: the response,
// its body, and the respBody the exchange wraps that in.
type parsedResponse struct {
	res  http.Response
	body lengthBody
	wrap respBody
}

// parseResponse returns what http.ReadResponse would return for the
// response head at the start of br's buffer, having read it, or nil,
// having read nothing, for any head but the common one. The common one is
// buffered to its end, HTTP/1.1, with a final status (200 to 599) and a
// single valid Content-Length (or none, for 204 and 304), every line ended
// by CRLF, and no line http.ReadResponse would refuse, unfold or act on
// beyond splitting it: none folded, no Transfer-Encoding, Trailer or
// Pragma; a request that is not HEAD. Where ReadMIMEHeader copies each
// value and each uncommon name, it makes one string of the head and takes
// the status, names and values from it, and allocates the response, its
// body and the respBody together: fewer allocations and less time per
// head (BenchmarkReadResponse), fewer instructions per proxied request
// (make bench-instr).
func parseResponse(br *bufio.Reader, r *http.Request) *parsedResponse {
	if r.Method == http.MethodHead {
		return nil
	}
	buf, _ := br.Peek(br.Buffered())
	// One pass over the lines finds the status line's end, the head's
	// (the empty line) and the number of header lines between. A line
	// not ended by CRLF is a head http.ReadResponse reads another way.
	statusEnd, end, nlines := -1, -1, 0
	for i := 0; end < 0; {
		j := bytes.IndexByte(buf[i:], '\n')
		if j < 1 || buf[i+j-1] != '\r' {
			return nil // not buffered to its end, or a bare LF
		}
		switch {
		case statusEnd < 0:
			statusEnd = i + j - 1
		case j == 1:
			end = i - 2 // where the last header line's CRLF starts
		default:
			nlines++
		}
		i += j + 1
	}
	const proto = "HTTP/1.1 "
	// The status line: "HTTP/1.1 ", three digits, then its end or a space
	// and the reason phrase.
	line := buf[:statusEnd]
	if len(line) < len(proto)+3 || string(line[:len(proto)]) != proto ||
		(len(line) > len(proto)+3 && line[len(proto)+3] != ' ') || !printable(line[len(proto):]) {
		return nil
	}
	code := 0
	for _, c := range line[len(proto) : len(proto)+3] {
		if c < '0' || c > '9' {
			return nil
		}
		code = code*10 + int(c-'0')
	}
	if code < 200 || code > 599 {
		return nil
	}
	head := string(buf[:end+2]) // through the last header line's CRLF
	h := make(http.Header, nlines)
	strs := make([]string, nlines) // one value for each name, as ReadMIMEHeader does
	var contentLength []string
	for rest := head[len(line)+2:]; rest != ""; {
		// Every line ends in CRLF (above).
		n := strings.IndexByte(rest, '\n')
		kv := rest[:n-1]
		rest = rest[n+1:]
		colon := strings.IndexByte(kv, ':')
		if colon <= 0 {
			return nil
		}
		name, value := kv[:colon], kv[colon+1:]
		name, ok := canonicalName(name)
		if !ok || !validValue(value) {
			return nil
		}
		switch name {
		case "Transfer-Encoding", "Trailer", "Pragma":
			return nil
		}
		value = textproto.TrimString(value)
		vv := h[name]
		if vv == nil {
			vv, strs = strs[:1:1], strs[1:]
			vv[0] = value
		} else {
			vv = append(vv, value)
		}
		h[name] = vv
		if name == "Content-Length" {
			contentLength = vv
		}
	}
	// 204 and 304 have no body; a Content-Length they carry speaks of
	// another response.
	noBody := code == http.StatusNoContent || code == http.StatusNotModified
	var n uint64
	switch {
	case len(contentLength) == 1 && contentLength[0] != "":
		var err error
		if n, err = strconv.ParseUint(contentLength[0], 10, 63); err != nil {
			return nil
		}
	case len(contentLength) == 0 && noBody:
	default:
		// Several, empty or none: http.ReadResponse settles those (a
		// body read to the end of the stream, or an error).
		return nil
	}
	pr := &parsedResponse{res: http.Response{
		Status: head[len(proto):len(line)], StatusCode: code,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, ContentLength: int64(n), Request: r,
		Body: http.NoBody,
	}}
	res := &pr.res
	if noBody {
		res.ContentLength = 0
	}
	if httpguts.HeaderValuesContainsToken(h["Connection"], "close") {
		res.Close = true
		delete(h, "Connection")
	}
	if res.ContentLength > 0 {
		pr.body = lengthBody{br: br, n: res.ContentLength}
		res.Body = &pr.body
	}
	_, _ = br.Discard(end + len("\r\n\r\n"))
	return pr
}

// lengthBody reads a body of n bytes as net/http's does: the read that
// takes the last byte also returns io.EOF, and an end of stream before it
// is io.ErrUnexpectedEOF. respBody, which wraps it, closes the connection.
type lengthBody struct {
	br *bufio.Reader
	n  int64 // bytes left
}

func (b *lengthBody) Read(p []byte) (int, error) {
	if b.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.n {
		p = p[:b.n]
	}
	n, err := b.br.Read(p)
	b.n -= int64(n)
	switch {
	case err == io.EOF:
		err = io.ErrUnexpectedEOF
	case err == nil && b.n == 0:
		err = io.EOF
	}
	return n, err
}

func (b *lengthBody) Close() error { return nil }

// tokenByte classes the bytes of a header name: 0 for a byte a token
// cannot hold, 1 for a lower-case letter, 2 for an upper-case one, 3 for any
// other token byte.
var tokenByte = func() (t [256]byte) {
	for c := 0; c < 256; c++ {
		switch {
		case 'a' <= c && c <= 'z':
			t[c] = 1
		case 'A' <= c && c <= 'Z':
			t[c] = 2
		case c < 0x80 && httpguts.IsTokenRune(rune(c)):
			t[c] = 3
		}
	}
	return t
}()

// canonicalName returns name in canonical form and whether it is a token,
// as textproto.CanonicalMIMEHeaderKey after httpguts.ValidHeaderFieldName
// would, in one pass over a name already canonical, as a backend's names
// mostly are, where those two take a pass each (make bench-instr counts
// the difference).
func canonicalName(name string) (string, bool) {
	if name == "" {
		return "", false
	}
	upper := true // the next letter starts a word
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch tokenByte[c] {
		case 0:
			return "", false
		case 1:
			if upper {
				return canonicalSlow(name)
			}
		case 2:
			if !upper {
				return canonicalSlow(name)
			}
		}
		upper = c == '-'
	}
	return name, true
}

// canonicalSlow is canonicalName for a name not in canonical form, whose
// bytes after the first out of place are not checked yet.
func canonicalSlow(name string) (string, bool) {
	if !httpguts.ValidHeaderFieldName(name) {
		return "", false
	}
	return textproto.CanonicalMIMEHeaderKey(name), true
}

// printable reports whether s is printable ASCII and tabs, what a status
// line may hold here.
func printable(s []byte) bool {
	for _, c := range s {
		if (c < ' ' && c != '\t') || c >= 0x7f {
			return false
		}
	}
	return true
}

// validValue reports whether every byte of a header value is one
// ReadMIMEHeader accepts: visible ASCII, space, tab, or obs-text.
func validValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}
