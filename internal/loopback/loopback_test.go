package loopback

import (
	"net"
	"strconv"
	"testing"
)

func TestFreeAddrs(t *testing.T) {
	addrs, err := FreeAddrs(20)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, a := range addrs {
		host, p, err := net.SplitHostPort(a)
		if err != nil {
			t.Fatal(err)
		}
		port, _ := strconv.Atoi(p)
		if host != "127.0.0.1" || port < lowPort || port >= highPort {
			t.Errorf("address %s, want 127.0.0.1 with a port in %d-%d", a, lowPort, highPort)
		}
		if seen[a] {
			t.Errorf("address %s handed out twice", a)
		}
		seen[a] = true
		// Free again: the caller's process can take it.
		ln, err := net.Listen("tcp", a)
		if err != nil {
			t.Errorf("address %s not free after FreeAddrs: %v", a, err)
			continue
		}
		ln.Close()
	}
}
