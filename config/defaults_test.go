package config

import (
	"errors"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
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

func TestParseState(t *testing.T) {
	for _, st := range States {
		if got, err := ParseState(string(st)); err != nil || got != st {
			t.Errorf("ParseState(%q) = %q, %v", st, got, err)
		}
	}
	for _, s := range []string{"", "Ready", "draining", "maintenance", "ready "} {
		if _, err := ParseState(s); !errors.Is(err, ErrUnknownState) {
			t.Errorf("ParseState(%q) = %v, want ErrUnknownState", s, err)
		}
	}
}

func TestReadToken(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good", "  0123456789abcdef\n")
	short := write("short", "secret\n")
	spaced := write("spaced", "0123456789 abcdef\n")
	tests := []struct {
		admin   Admin
		want    string
		wantErr bool
	}{
		{Admin{}, "", false},
		{Admin{Token: "0123456789abcdef"}, "0123456789abcdef", false},
		{Admin{TokenFile: good}, "0123456789abcdef", false},
		{Admin{TokenFile: short}, "", true},
		{Admin{TokenFile: spaced}, "", true},
		{Admin{TokenFile: filepath.Join(dir, "missing")}, "", true},
	}
	for _, tt := range tests {
		got, err := tt.admin.ReadToken()
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("%+v.ReadToken() = %q, %v; want %q, error %v", tt.admin, got, err, tt.want, tt.wantErr)
		}
	}
	if _, err := (Admin{TokenFile: filepath.Join(dir, "missing")}).ReadToken(); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want fs.ErrNotExist", err)
	}
}
