package proxy

import "net/http"

// HTTP/2 is served by net/http's own server, on a TLS listener that offers
// it by ALPN (tls.go). h2Config sets the limits of that server which the
// proxy relies on, rather than leaving them to net/http's defaults.

// h2MaxStreams is how many streams a client may have open at once on one
// connection: how many of its requests run at once, each with a handler
// and a backend request. net/http starts no more handlers than this for a
// connection, however fast the client opens and resets streams (the rapid
// reset attack), and closes the connection with ENHANCE_YOUR_CALM when
// four times as many wait to start. It is net/http's own default, set here
// because what a client can hold of the proxy and its backends rests on it.
const h2MaxStreams = 250

// h2MaxFrame is the largest frame the proxy reads, and says it reads in
// its SETTINGS: the protocol's initial size, and its least. net/http's
// default, a mebibyte, has two costs. Each connection keeps a read buffer
// as large as the largest frame it has read, so a client could pin a
// mebibyte per connection with one frame of an unknown type, which is read
// whole and ignored. And a client may send frames of the protocol's size
// before the server's SETTINGS reach it; a larger one must be a connection
// error (FRAME_SIZE_ERROR), as h2spec checks. Request bodies and header
// blocks of any size still pass, in more frames.
const h2MaxFrame = 16 << 10

// h2StreamWindow is how much of a request body the proxy takes from a
// client on one stream before its backend takes it: net/http's default,
// which lets an upload run at a mebibyte per round trip. h2ConnWindow is
// how much it takes on a whole connection: four streams' worth, where
// net/http's default is one. With one, a single upload whose backend was
// slow to take it held the connection's whole window, and every other
// upload on the connection waited with none, to be answered 408 by
// min_body_rate, charged for a wait that was the proxy's. Now it takes
// four such uploads at once; the cost is that a connection may hold up to
// four mebibytes of bodies not yet taken, rather than one.
const (
	h2StreamWindow = 1 << 20
	h2ConnWindow   = 4 * h2StreamWindow
)

// h2Config is the HTTP/2 configuration of the proxy's http.Server.
func h2Config() *http.HTTP2Config {
	return &http.HTTP2Config{
		MaxConcurrentStreams:          h2MaxStreams,
		MaxReadFrameSize:              h2MaxFrame,
		MaxReceiveBufferPerStream:     h2StreamWindow,
		MaxReceiveBufferPerConnection: h2ConnWindow,
	}
}
