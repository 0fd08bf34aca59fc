package config

import (
	"net/netip"
	"testing"
)

func TestParseTrustedProxy(t *testing.T) {
	tests := []struct {
		in   string
		want string // "" for an error
	}{
		{"10.0.0.0/8", "10.0.0.0/8"},
		{"192.0.2.7", "192.0.2.7/32"},
		{"2001:db8::/32", "2001:db8::/32"},
		{"::1", "::1/128"},
		// IPv4-mapped forms are kept as IPv4, as Go reports IPv4 peers.
		{"::ffff:192.0.2.7", "192.0.2.7/32"},
		{"::ffff:10.0.0.0/104", "10.0.0.0/8"},
		{"::ffff:0.0.0.0/96", "0.0.0.0/0"},
		{"::/80", "::/80"},
		{"10.0.0.1/8", ""},
		{"10.0.0.0/33", ""},
		{"fe80::1%eth0", ""},
		{"example.com", ""},
		{"", ""},
		{"10.0.0.0/", ""},
	}
	for _, tt := range tests {
		got, err := parseTrustedProxy(tt.in)
		switch {
		case tt.want == "" && err == nil:
			t.Errorf("parseTrustedProxy(%q) = %v, want an error", tt.in, got)
		case tt.want != "" && err != nil:
			t.Errorf("parseTrustedProxy(%q): %v", tt.in, err)
		case tt.want != "" && got != netip.MustParsePrefix(tt.want):
			t.Errorf("parseTrustedProxy(%q) = %v, want %s", tt.in, got, tt.want)
		}
	}
}
