// Package h1 is an HTTP/1.1 client for the proxy's common request: one
// without a body and safe to repeat (GET, HEAD, OPTIONS, TRACE) to an
// http:// backend. Client.Handles says which requests it takes; every
// other (bodies, protocol switches, https) stays with http.Transport,
// whose concurrent reading and writing those need.
//
// # Why not http.Transport
//
// http.Transport runs two goroutines per connection, and every request
// crosses between them and the caller over channels and a select. Here the
// request is written and its response read in the caller's goroutine,
// which takes a large share of the proxy's CPU per request off
// (make bench-instr; the figures are in docs/performance.md). The request
// head of a GET or HEAD is written without fmt, and the common response
// head is parsed in one pass and one copy (BenchmarkReadResponse).
//
// # The transport's guarantees it keeps, and how they are tested
//
// The Client is held to what a backend or a client of the proxy could tell
// apart from http.Transport made with the same Config (DisableCompression
// set, no proxy: the proxy's transport), not only to its output on good
// input:
//
//   - The bytes on the wire are Request.Write's: writeHead writes the
//     common head itself, byte for byte, and declines anything else to
//     Request.Write. TestWritesWhatTransportWrites compares what a backend
//     receives from both clients; TestWriteHead and FuzzWriteHead compare
//     writeHead with Request.Write.
//   - A response is read as http.ReadResponse reads it: parseResponse takes
//     only the common head (HTTP/1.1, a final status, one Content-Length,
//     nothing to unfold) and leaves every other to http.ReadResponse.
//     TestParseResponse and FuzzParseResponse run both on the same bytes.
//   - The transport's behaviour where a backend or client can tell: the
//     response-header timeout, the cap on response header bytes, 1xx
//     responses relayed through the request's ClientTrace, a connection
//     kept only when both sides allow it and the body was read to its end,
//     idle connections closed after IdleConnTimeout and capped as
//     MaxIdleConns and MaxIdleConnsPerHost, cancellation when the request's
//     context ends. The tests of client_test.go hold each, against backends
//     on raw sockets.
//   - A response is read only for the request it answers. http.Transport
//     reads every idle connection and drops one on which anything arrives
//     (stray bytes after a response, a second response, the backend's
//     close). This client reads a connection only while a request is out,
//     so it checks instead, at the two points where the next request could
//     take bytes that are not its answer: when a response ends, a
//     connection with bytes buffered past it is closed; when an idle
//     connection is taken for a request, it is first asked without blocking
//     whether anything arrived while it was idle (idlePeek, one recv with
//     MSG_PEEK|MSG_DONTWAIT), and closed if so. Both leave the one window
//     the transport has too: bytes a backend sends between that check and
//     the request's arrival, which no client can tell from an answer.
//     FuzzStream drives this client and http.Transport over the same
//     streams of responses and stray bytes on keep-alive connections and
//     holds both to the delivery http.ReadResponse reads from each
//     request's answer alone; TestIdlePeek checks the question asked of the
//     socket. Where a socket cannot be asked so (not Linux), Handles takes
//     nothing.
//   - A request is sent once. When a reused connection fails, the error
//     goes back to the caller, whose rule alone decides whether the request
//     goes again and where; a connection the check finds closed is dropped
//     before anything is written, which is no send at all
//     (TestStaleConnection).
package h1
