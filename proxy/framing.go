package proxy

import "net/http"

// A proxy in front of affinity (a CDN, a load balancer) may carry the
// requests of many clients on one connection. If it frames a request
// another way than affinity does, bytes one of them sends inside a body
// become, for affinity, a request of their own, routed and answered as if
// the next client had sent it (request smuggling). net/http reads each
// request one unambiguous way, and the proxy forwards it re-framed, so a
// backend always reads what the proxy routed; what remains is the client
// side: after a request whose framing another reader may take otherwise,
// the connection is closed, so that nothing after it is ever read as a
// request.

// closesAfter reports whether the HTTP/1 connection r came on must close
// after the response to r:
//
//   - a chunked request. RFC 9112 (6.3) has a server close the connection
//     after a request with both Transfer-Encoding and Content-Length: a
//     reader that takes the Content-Length (CL.TE) sees the bytes after the
//     chunked body as part of the request. net/http reads such a request
//     as chunked and deletes its Content-Length before any handler sees
//     it, so the proxy cannot tell it from a plain chunked one, and closes
//     after every chunked request. That also leaves nothing to read after
//     a chunked body whose syntax (sizes, extensions, line ends, trailers)
//     another reader may have parsed differently.
//   - an HTTP/1.0 request, which has no chunked coding: RFC 9112 (6.1) has
//     a server take a Transfer-Encoding in HTTP/1.0 for faulty framing and
//     close after the response. net/http ignores the header, and deletes
//     it, so that a keep-alive HTTP/1.0 connection went on to read a
//     chunked body as the next request. HTTP/1.0 keep-alive is given up
//     for it.
func closesAfter(r *http.Request) bool {
	return r.ProtoMajor == 1 && (r.ProtoMinor == 0 || len(r.TransferEncoding) > 0)
}

// closeDoubtful has the connection of every request closesAfter names
// closed after its response, for a listener whose handlers write their
// answers themselves (the admin listener's): a front proxy may carry an
// admin client's requests too.
func closeDoubtful(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if closesAfter(r) {
			w.Header().Set("Connection", "close")
		}
		next.ServeHTTP(w, r)
	})
}

// closingWriter is the ResponseWriter of a request after which the
// connection closes: net/http closes it after a final response whose
// header says "Connection: close". The header is set as the final status
// is written, not before: ReverseProxy clears the ResponseWriter's header
// after each 1xx response it relays.
type closingWriter struct {
	http.ResponseWriter
	final bool // a final status was written
}

// WriteHeader writes the status, and for a final one asks net/http to
// close the connection after it.
func (w *closingWriter) WriteHeader(code int) {
	if code >= 200 && !w.final {
		w.final = true
		w.Header().Set("Connection", "close")
	}
	w.ResponseWriter.WriteHeader(code)
}

// Write writes the body, and first the 200 that net/http would write
// itself.
func (w *closingWriter) Write(p []byte) (int, error) {
	if !w.final {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

// Unwrap returns the wrapped writer, for http.ResponseController.
func (w *closingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// serveOptions answers "OPTIONS *", a question about the server itself, as
// net/http's own handler for it does: 200 and no body. The proxy answers it
// itself (http.Server's DisableGeneralOptionsHandler), so that such a
// request with a chunked body closes the connection like any other:
// net/http's handler read the body and went on to the bytes after it.
func serveOptions(w http.ResponseWriter, r *http.Request) {
	if closesAfter(r) {
		w.Header().Set("Connection", "close")
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusOK)
}
