package h1

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"time"
)

// handshake makes hc speak TLS over its connection, verifying the backend
// as c's TLS config says, for the server name of its host unless the config
// names one, as http.Transport does.
func (c *Client) handshake(ctx context.Context, hc *conn) error {
	cfg := new(tls.Config)
	if c.tls != nil {
		cfg = c.tls.Clone()
	}
	if cfg.ServerName == "" {
		cfg.ServerName = tlsHost(hc.key.addr)
	}
	hc.rec = &recordConn{Conn: hc.raw, br: bufio.NewReaderSize(hc.raw, 4<<10)}
	tc := tls.Client(hc.rec, cfg)
	if c.handshakeTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.handshakeTimeout)
		defer cancel()
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		return err
	}
	st := tc.ConnectionState()
	hc.nc, hc.tls, hc.state = tc, tc, &st
	return nil
}

// tlsHost is the host of a host:port, the server name http.Transport
// verifies a backend for.
func tlsHost(addr string) string {
	if i := strings.LastIndexByte(addr, ':'); i > strings.LastIndexByte(addr, ']') {
		return addr[:i]
	}
	return addr
}

// recordHeaderLen is the length of a TLS record's header: its type, its
// version, and the length of what follows.
const recordHeaderLen = 5

// recordConn is the connection a TLS client reads its records from. It
// hands crypto/tls no byte past the end of the record it is reading, and
// keeps what it read beyond in a buffer of its own: crypto/tls reads ahead
// into buffers nothing outside can look into, where bytes a backend sent
// after its response would hide from the check before reuse. So every byte
// that arrived is in the socket, in br, in a record crypto/tls has begun,
// or decrypted in crypto/tls; tlsQuiet looks at each.
type recordConn struct {
	net.Conn
	br   *bufio.Reader // reads Conn
	left int           // bytes of the current record not yet read, header included
	one  [1]byte       // what tlsQuiet reads into
}

// NetConn returns the connection under c, as tls.Conn's NetConn does.
func (c *recordConn) NetConn() net.Conn { return c.Conn }

func (c *recordConn) Read(p []byte) (int, error) {
	if c.left == 0 {
		hdr, err := c.br.Peek(recordHeaderLen)
		if len(hdr) < recordHeaderLen {
			var ne net.Error
			if len(hdr) == 0 || errors.As(err, &ne) && ne.Timeout() {
				// Nothing is taken: a read after a timeout finds
				// the same header.
				return 0, err
			}
			// The stream ends inside a header: the bytes there are,
			// then its end.
			n, _ := c.br.Read(p[:min(len(p), len(hdr))])
			return n, err
		}
		c.left = recordHeaderLen + (int(hdr[3])<<8 | int(hdr[4]))
	}
	n, err := c.br.Read(p[:min(len(p), c.left)])
	c.left -= n
	return n, err
}

// idle reports whether c holds no byte that crypto/tls has not taken, and
// crypto/tls no part of a record.
func (c *recordConn) idle() bool { return c.left == 0 && c.br.Buffered() == 0 }

// aLongTimeAgo is a deadline that has passed.
var aLongTimeAgo = time.Unix(1, 0)

// tlsQuiet reports whether hc's TLS connection holds nothing the backend
// sent, past what quiet asks the socket: no byte in recordConn's buffer or
// in a record begun, and no plain text decrypted and not read. That last
// it asks with a read that cannot wait, its deadline passed: crypto/tls
// returns the plain text it holds, or decrypts a record it holds whole, or
// else times out without reading the socket, and keeps no error from
// that.
func tlsQuiet(hc *conn) bool {
	if !hc.rec.idle() || hc.tls.SetReadDeadline(aLongTimeAgo) != nil {
		return false
	}
	n, err := hc.tls.Read(hc.rec.one[:])
	if hc.tls.SetReadDeadline(time.Time{}) != nil {
		return false
	}
	var ne net.Error
	return n == 0 && errors.As(err, &ne) && ne.Timeout()
}
