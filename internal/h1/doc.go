// Package h1 is the proxy's HTTP/1.1 client: it sends every request to
// http:// and https:// backends over keep-alive connections of its own,
// but a protocol switch, whose connection becomes the caller's, and the few
// requests http.Transport would refuse or treat apart. Client.Handles says
// which it takes; the others stay with http.Transport.
//
// # Why not http.Transport
//
// Two reasons. http.Transport runs two goroutines per connection, and
// every request crosses between them and the caller over channels and a
// select; here a request without a body is written and its response read
// in the caller's goroutine, which takes a large share of the proxy's CPU
// per request off (make bench-instr; the figures are in
// docs/performance.md). The request head of a GET or HEAD is written
// without fmt, and the common response head is parsed in one pass and one
// copy (BenchmarkReadResponse).
//
// And http.Transport cannot keep the guarantee below under concurrency: a
// connection whose response has just ended is handed to a request waiting
// for one before the transport's reader has looked at what came after
// that response, so a backend that writes a second response behind the
// first has it read as the waiting request's answer: another client's.
//
// # The transport's guarantees it keeps, and how they are tested
//
// The Client is held to what a backend or a client of the proxy could tell
// apart from http.Transport made with the same Config (DisableCompression
// set, no proxy: the proxy's transport), not only to its output on good
// input:
//
//   - The bytes on the wire are Request.Write's: writeHead writes the
//     common head itself, byte for byte, and leaves anything else, bodies
//     included, to Request.Write. TestWritesWhatTransportWrites compares
//     what a backend receives from both clients; TestWriteHead and
//     FuzzWriteHead compare writeHead with Request.Write.
//   - A body is written while the response is read, as the transport's
//     writeLoop writes it (bodyWriter): a backend that answers before it
//     has read the body has its answer read; "Expect: 100-continue" holds
//     the body back until a 100 Continue, the final response (unless the
//     connection is to close) or ExpectContinueTimeout; the response
//     header timeout runs from the end of the writing; a failure reading
//     the client's body ends the exchange with that error; once RoundTrip
//     has returned an error the body is read no more; the body goes to the
//     backend as the client sends it, each read as it comes, never held
//     until a buffer fills. TestRequestBody holds each, and TestBodyStreams
//     the last, against both clients.
//   - A response is read as http.ReadResponse reads it: parseResponse takes
//     only the common head (HTTP/1.1, a final status, one Content-Length,
//     nothing to unfold) and leaves every other to http.ReadResponse.
//     TestParseResponse and FuzzParseResponse run both on the same bytes.
//   - The transport's behaviour where a backend or client can tell: the
//     response-header timeout, which bounds the whole head, 1xx responses
//     included, the cap on response header bytes, 1xx responses relayed
//     through the request's ClientTrace (at most max1xxResponses, a cap
//     the transport no longer keeps; TestInformationalCap), and the
//     connection each request takes reported to its GotConn (TestGotConn;
//     the proxy tells from it which connection a request's backend
//     ended), a connection
//     kept only when both sides allow it, the body was read to its end and
//     the request written whole, idle connections closed after
//     IdleConnTimeout and capped as MaxIdleConns and MaxIdleConnsPerHost,
//     cancellation when the request's context ends, TLS verified as the
//     transport verifies it (its config, the server name of the URL's host
//     unless the config names one, TLSHandshakeTimeout). The tests of
//     client_test.go and body_test.go hold each, against backends on raw
//     sockets.
//   - A response is delivered only to the request it answers, and a
//     connection that received anything while no request was out on it is
//     never used again. This client reads a connection only while a
//     request is out, so it checks at the two points where the next
//     request could take bytes that are not its answer: when a response
//     ends, a connection with bytes buffered past it is closed; when an
//     idle connection is taken for a request, it is first asked without
//     blocking whether anything arrived while it was idle, and closed if
//     so. The socket is asked with one recv with MSG_PEEK|MSG_DONTWAIT
//     (idlePeek); a TLS connection also holds bytes in crypto/tls, which
//     tlsQuiet looks into (recordConn keeps every byte past the record
//     crypto/tls reads where it can be seen). Both leave one window, that
//     no client can close: bytes a backend sends between that check and
//     the request's arrival, which nothing tells from an answer
//     (go run ./internal/perf stray measures it beside http.Transport and
//     HAProxy; the figures are in docs/security.md).
//     TestConcurrentClients has many requests at once over one Client
//     against backends that send more than their answers, in plain HTTP
//     and in TLS; FuzzStream drives this client and http.Transport over
//     the same streams of responses and stray bytes on keep-alive
//     connections, with and without request bodies, in plain HTTP and in
//     TLS, and holds both to the delivery http.ReadResponse reads from each
//     request's answer alone; TestIdlePeek and TestTLSQuiet check the
//     questions asked. Where a socket cannot be asked so (not Linux),
//     Handles takes nothing.
//   - Where it is stricter than the transport, on purpose, against a
//     hostile or broken backend: response heads are capped at
//     MaxResponseHeaderBytes (64 KiB, not 10 MiB; the proxy gives its
//     transport the same cap); ResponseBodyTimeout bounds the silence
//     between two reads of a body, which the transport leaves unbounded
//     (TestResponseBodyTimeout); a response framed both by Content-Length
//     and by chunked Transfer-Encoding, which both read as chunked, has
//     its connection closed after it, as RFC 9112 §6.3 says and the
//     transport does not (TestKeepAlive); a host seen sending bytes no
//     request asked for has its connections serve one request each for
//     WaryPeriod (TestWary). FuzzStream compares what each request
//     receives, not which connection it went on, so these last two
//     differences do not show there.
//   - A request is sent once. When a connection fails, the error goes back
//     to the caller, whose rule alone decides whether the request goes
//     again and where; a connection the check finds closed is dropped
//     before anything is written, which is no send at all
//     (TestStaleConnection). An error of a request of which no byte was
//     written wraps ErrNotSent, so that the caller knows it may send it
//     anywhere (TestNotSent).
package h1
