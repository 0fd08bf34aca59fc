package config

import (
	"net/url"
	"testing"
)

func TestDerivedName(t *testing.T) {
	tests := []struct{ url, want string }{
		{"http://app", "app:80"},
		{"https://app", "app:443"},
		{"http://App.Internal:8080/", "app.internal:8080"},
		{"https://127.0.0.1:8443", "127.0.0.1:8443"},
		{"http://[::1]", "[::1]:80"},
		{"http://[::1]:9001", "[::1]:9001"},
	}
	for _, tt := range tests {
		u, err := url.Parse(tt.url)
		if err != nil {
			t.Fatal(err)
		}
		if got := derivedName(u); got != tt.want {
			t.Errorf("derivedName(%s) = %q, want %q", tt.url, got, tt.want)
		}
	}
}
