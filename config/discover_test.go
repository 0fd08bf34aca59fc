package config

import "testing"

func TestResolverAddress(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"10.0.0.10", "10.0.0.10:53", true},
		{"10.0.0.10:5353", "10.0.0.10:5353", true},
		{"::1", "[::1]:53", true},
		{"[::1]:53", "[::1]:53", true},
		{"[2001:db8::1]:1053", "[2001:db8::1]:1053", true},
		{"dns.example.com", "", false},
		{"dns.example.com:53", "", false},
		{"10.0.0.10:0", "", false},
		{"10.0.0.10:65536", "", false},
		{"fe80::1%eth0", "", false},
		{"[fe80::1%eth0]:53", "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		got, err := resolverAddress(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("resolverAddress(%q) = %q, %v; want %q, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestServiceName(t *testing.T) {
	tests := map[string]string{
		"app.example.com":              "app.example.com",
		"app.example.com.":             "app.example.com",
		"_https._tcp.app.example.com.": "app.example.com",
		"_http._tcp.app":               "app",
		"_only":                        "_only",
	}
	for in, want := range tests {
		if got := serviceName(in); got != want {
			t.Errorf("serviceName(%q) = %q, want %q", in, got, want)
		}
	}
}
