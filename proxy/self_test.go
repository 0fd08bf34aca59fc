package proxy

import (
	"net/netip"
	"testing"
)

func TestSelfAddrs(t *testing.T) {
	tests := []struct {
		listen []string
		addr   string
		want   bool
	}{
		{[]string{"127.0.0.1:8080"}, "127.0.0.1:8080", true},
		{[]string{"127.0.0.1:8080"}, "[::ffff:127.0.0.1]:8080", true},
		{[]string{"127.0.0.1:8080"}, "127.0.0.2:8080", false},
		{[]string{"127.0.0.1:8080"}, "127.0.0.1:8081", false},
		{[]string{"127.0.0.1:8080", "127.0.0.1:9090"}, "127.0.0.1:9090", true},
		{[]string{":8080"}, "127.0.0.9:8080", true},
		{[]string{"0.0.0.0:8080"}, "[::1]:8080", true},
		{[]string{"[::]:8080"}, "127.0.0.1:8080", true},
		{[]string{"[::]:8080"}, "192.0.2.7:8080", false},
		{[]string{"[::]:8080"}, "127.0.0.1:8081", false},
		{[]string{"[::1]:8080"}, "[::1]:8080", true},
		{[]string{"localhost:8080"}, "127.0.0.1:8080", true},
		{[]string{"", "127.0.0.1:0"}, "127.0.0.1:0", false},
	}
	for _, tt := range tests {
		if got := newSelfAddrs(tt.listen...).has(netip.MustParseAddrPort(tt.addr)); got != tt.want {
			t.Errorf("listening on %q: has(%s) = %v, want %v", tt.listen, tt.addr, got, tt.want)
		}
	}
}
