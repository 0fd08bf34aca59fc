package h1

import (
	"io"
	"net"
	"testing"

	"github.com/affinityproxy/affinity/internal/testutil"
)

// loopbackPair returns both ends of a TCP connection on loopback.
func loopbackPair(t testing.TB) (client, server net.Conn) {
	t.Helper()
	ln := testutil.Listen(t)
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			c = nil
		}
		accepted <- c
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() {
		_ = client.Close()
		_ = server.Close()
	})
	return client, server
}

// TestIdlePeek: quiet reports a connection nothing arrived on, and leaves
// what did arrive to be read.
func TestIdlePeek(t *testing.T) {
	client, server := loopbackPair(t)
	var p idlePeek
	p.init(client)
	if !p.quiet() {
		t.Fatal("a connection nothing arrived on is not quiet")
	}
	if _, err := io.WriteString(server, "x"); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, waitFor, "a byte arrived", func() bool { return !p.quiet() })
	b := make([]byte, 2)
	if n, err := client.Read(b); n != 1 || b[0] != 'x' || err != nil {
		t.Fatalf("read %q, %v after the check; want the byte it left", b[:n], err)
	}
	if !p.quiet() {
		t.Fatal("not quiet once the byte was read")
	}
	_ = server.Close()
	testutil.Eventually(t, waitFor, "the close noticed", func() bool { return !p.quiet() })

	c1, _ := net.Pipe()
	defer c1.Close()
	var pipe idlePeek
	pipe.init(c1)
	if pipe.quiet() {
		t.Error("a connection without a socket to ask is quiet")
	}
	_ = client.Close()
	if p.quiet() {
		t.Error("a closed connection is quiet")
	}
}

// BenchmarkIdlePeek is what Client pays to check an idle connection
// before it reuses it, a recv that finds nothing.
func BenchmarkIdlePeek(b *testing.B) {
	client, _ := loopbackPair(b)
	var p idlePeek
	p.init(client)
	b.ReportAllocs()
	for b.Loop() {
		if !p.quiet() {
			b.Fatal("not quiet")
		}
	}
}
