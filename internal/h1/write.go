package h1

import (
	"bufio"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"slices"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// writeHead writes the head of a body-less GET or HEAD byte for byte as
// Request.Write does, without the fmt.Fprintf calls Request.Write makes
// for every request (make bench-instr counts what that saves). It reports
// false, having written nothing, for any request where Request.Write would
// do more than the common case does: another method or framing, a host it
// would rewrite or drop, a URL it would refuse, no User-Agent key
// (ReverseProxy always sets one), or a trace that wants to hear of the
// writing.
func writeHead(bw *bufio.Writer, r *http.Request, trace *httptrace.ClientTrace) bool {
	if (r.Method != http.MethodGet && r.Method != http.MethodHead) || len(r.TransferEncoding) > 0 || r.ContentLength != 0 {
		return false
	}
	if trace != nil && (trace.WroteHeaderField != nil || trace.WroteHeaders != nil || trace.WroteRequest != nil) {
		return false
	}
	host := r.Host
	if host == "" {
		host = r.URL.Host
	}
	// Request.Write would punycode a non-ASCII host, empty an invalid one
	// and strip an IPv6 zone.
	if !isASCII(host) || !httpguts.ValidHostHeader(host) || strings.IndexByte(host, '%') >= 0 {
		return false
	}
	ruri := r.URL.RequestURI()
	for i := 0; i < len(ruri); i++ {
		if ruri[i] < ' ' || ruri[i] == 0x7f {
			return false
		}
	}
	uas, ok := r.Header["User-Agent"]
	if !ok {
		return false
	}
	ua := ""
	if len(uas) > 0 {
		ua = uas[0]
	}
	if strings.ContainsAny(ua, "\r\n") {
		return false
	}
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	bw.WriteString(ruri)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(host)
	bw.WriteString("\r\n")
	if ua != "" { // even when trimming leaves nothing, as Request.Write
		bw.WriteString("User-Agent: ")
		bw.WriteString(textproto.TrimString(ua))
		bw.WriteString("\r\n")
	}
	writeFields(bw, r.Header)
	bw.WriteString("\r\n")
	return true
}

// headerField is a header's name and values.
type headerField struct {
	name   string
	values []string
}

// writeFields writes the lines of h as Header.WriteSubset does for
// Request.Write: sorted by name, each value trimmed, without the headers
// Request.Write writes itself (net/http's reqWriteExcludeHeader). The
// fields are sorted on the stack where WriteSubset takes a slice from a
// pool and looks each name up in a map of the excluded. Client.Handles
// checked every value (validHeaders), so none holds the CR or LF that
// WriteSubset would replace.
func writeFields(bw *bufio.Writer, h http.Header) {
	var stack [16]headerField
	fields := stack[:0]
	for name, values := range h {
		switch name {
		case "Host", "User-Agent", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		}
		fields = append(fields, headerField{name, values})
	}
	slices.SortFunc(fields, func(a, b headerField) int { return strings.Compare(a.name, b.name) })
	for _, f := range fields {
		for _, v := range f.values {
			bw.WriteString(f.name)
			bw.WriteString(": ")
			bw.WriteString(textproto.TrimString(v))
			bw.WriteString("\r\n")
		}
	}
}

// validHeaders reports whether http.Transport would send h rather than
// refuse it, by the checks it makes (httpguts): every name a token, no value
// holding a control character other than tab. The server checked the
// client's already; what fails here goes to the transport, for its error.
func validHeaders(h http.Header) bool {
	for k, vs := range h {
		if !httpguts.ValidHeaderFieldName(k) {
			return false
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return false
			}
		}
	}
	return true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
