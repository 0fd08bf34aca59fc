//go:build linux

package h1

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/affinityproxy/affinity/internal/testutil"
)

// tlsPair returns a Client's connection to a TLS server on loopback, made
// as get makes it, and the server's side.
func tlsPair(t *testing.T) (*conn, *tls.Conn) {
	t.Helper()
	certs := testutil.NewCerts(t)
	raw, server := loopbackPair(t)
	srv := tls.Server(server, serverTLS(t, certs))
	cfg := testConfig(0, 0)
	cfg.TLSClientConfig = certs.Client
	c := New(cfg)
	hc := &conn{nc: raw, raw: raw, key: connKey{addr: raw.RemoteAddr().String(), tls: true}}
	hc.peek.init(raw)
	done := make(chan error, 1)
	go func() { done <- srv.Handshake() }()
	if err := c.handshake(context.Background(), hc); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return hc, srv
}

// delivered reports whether the peer of c has acknowledged every byte
// written on c: the bytes wait in the peer's socket.
func delivered(c net.Conn) bool {
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return false
	}
	queued := -1
	_ = rc.Control(func(fd uintptr) { queued, _ = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) })
	return queued == 0
}

// TestTLSQuiet: a TLS connection is quiet only when nothing the server sent
// past the answer read is waiting, wherever it waits: a record in the
// socket, a record or part of one read past the answer into recordConn's
// buffer, plain text decrypted and not read, the server's close.
func TestTLSQuiet(t *testing.T) {
	const answer = "answer"
	partial := "\x17\x03\x03\x00\x40" + "part of a record" // declares 64 bytes, holds 16
	tests := []struct {
		name   string
		before []string // records written before the answer is read, in one segment with it
		raw    string   // bytes written in the clear after those, before the answer is read
		after  []string // records written once the answer is read
		quiet  bool
	}{
		{"nothing past the answer", []string{answer}, "", nil, true},
		{"a record in the socket", []string{answer}, "", []string{"stray"}, false},
		{"plain text left", []string{answer + "+stray"}, "", nil, false},
		{"a record read past the answer", []string{answer, "stray"}, "", nil, false},
		{"part of a record read past the answer", []string{answer}, partial, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hc, srv := tlsPair(t)
			for _, rec := range tt.before {
				if _, err := io.WriteString(srv, rec); err != nil {
					t.Fatal(err)
				}
			}
			if tt.raw != "" {
				if _, err := io.WriteString(srv.NetConn(), tt.raw); err != nil {
					t.Fatal(err)
				}
			}
			// All of it waits in the client's socket when the answer
			// is read, which takes it into recordConn's buffer.
			testutil.Eventually(t, waitFor, "the records delivered", func() bool { return delivered(srv.NetConn()) })
			b := make([]byte, len(answer))
			if _, err := io.ReadFull(hc.tls, b); err != nil || string(b) != answer {
				t.Fatalf("read %q, %v; want the answer", b, err)
			}
			for _, rec := range tt.after {
				if _, err := io.WriteString(srv, rec); err != nil {
					t.Fatal(err)
				}
			}
			testutil.Eventually(t, waitFor, "the records delivered", func() bool { return delivered(srv.NetConn()) })
			if got := hc.quiet(); got != tt.quiet {
				t.Fatalf("quiet %v, want %v", got, tt.quiet)
			}
			if !tt.quiet {
				return
			}
			if !hc.quiet() {
				t.Fatal("a quiet connection is not quiet when asked again")
			}
			_ = srv.Close()
			testutil.Eventually(t, waitFor, "the server's close noticed", func() bool { return !hc.quiet() })
		})
	}
}

// TestRecordConn: recordConn hands out no byte past the record being read,
// whatever the reads ask for, and keeps the rest where idle sees it.
func TestRecordConn(t *testing.T) {
	rec := func(body string) string {
		return "\x17\x03\x03" + string([]byte{byte(len(body) >> 8), byte(len(body))}) + body
	}
	client, server := loopbackPair(t)
	if _, err := io.WriteString(server, rec("first")+rec("second")); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, waitFor, "the records delivered", func() bool { return delivered(server) })
	rc := &recordConn{Conn: client, br: bufio.NewReaderSize(client, 4<<10)}
	buf := make([]byte, 1024)
	var got string
	for len(got) < len(rec("first")) {
		n, err := rc.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got += string(buf[:n])
	}
	if got != rec("first") {
		t.Fatalf("read %q, want the first record alone", got)
	}
	if rc.idle() {
		t.Error("idle with a record buffered")
	}
	n, err := io.ReadFull(rc, buf[:len(rec("second"))])
	if err != nil || string(buf[:n]) != rec("second") {
		t.Fatalf("read %q, %v; want the second record", buf[:n], err)
	}
	if !rc.idle() {
		t.Error("not idle with both records read")
	}
}
