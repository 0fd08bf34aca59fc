package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// With --watch, serve rotates the listener's certificate when its files
// change, with no signal: here certbot's way, a symlinked directory
// swapped for one holding the renewed pair.
func TestServeRotatesWatchedCertificate(t *testing.T) {
	bin := buildBinary(t)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(backend.Close)
	dir := t.TempDir()
	live := filepath.Join(dir, "live")
	serials := make([]string, 2)
	for i := range serials {
		c := testutil.NewCerts(t)
		pair, err := tls.LoadX509KeyPair(c.ServerCert, c.ServerKey)
		if err != nil {
			t.Fatal(err)
		}
		serials[i] = pair.Leaf.SerialNumber.String()
		v := filepath.Join(dir, fmt.Sprintf("v%d", i))
		if err := os.Mkdir(v, 0o700); err != nil {
			t.Fatal(err)
		}
		for from, to := range map[string]string{c.ServerCert: "cert.pem", c.ServerKey: "key.pem"} {
			data, err := os.ReadFile(from)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(v, to), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.Symlink(filepath.Join(dir, "v0"), live); err != nil {
		t.Fatal(err)
	}
	listen := freeAddr(t)
	cfg := writeFile(t, "affinity.yaml", fmt.Appendf(nil,
		"listen: %s\ntls: {cert: %q, key: %q}\npools:\n  web:\n    backends: [{url: %q, name: a}]\n",
		listen, filepath.Join(live, "cert.pem"), filepath.Join(live, "key.pem"), backend.URL))
	p := startServe(t, bin, cfg)
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true}}
	serial := func() string {
		resp, err := c.Get("https://" + listen + "/")
		if err != nil {
			return ""
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		return resp.TLS.PeerCertificates[0].SerialNumber.String()
	}
	waitForWithin(t, 30*time.Second, "the first certificate served", func() bool { return serial() == serials[0] })

	tmp := filepath.Join(dir, "live.tmp")
	if err := os.Symlink(filepath.Join(dir, "v1"), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, live); err != nil {
		t.Fatal(err)
	}
	waitForWithin(t, 30*time.Second, "the renewed certificate served", func() bool { return serial() == serials[1] })
	p.signal(t, os.Interrupt)
	p.wait(t)
}

// certWatch follows the files the config in use names: a reload that
// names others moves the watches there; the same ones, or none, keep them.
func TestCertWatchFollows(t *testing.T) {
	dir := t.TempDir()
	path := func(name string) string { return filepath.Join(dir, name) }
	var c certWatch
	t.Cleanup(c.close)
	steps := []struct {
		name  string
		tls   *config.TLS
		files config.TLS // watched after
		key   bool       // a watch of its own for the key
		kept  bool       // the watchers from before
	}{
		{"first", &config.TLS{Cert: path("a.pem"), Key: path("a.key")}, config.TLS{Cert: path("a.pem"), Key: path("a.key")}, true, false},
		{"same files", &config.TLS{Cert: path("a.pem"), Key: path("a.key")}, config.TLS{Cert: path("a.pem"), Key: path("a.key")}, true, true},
		{"TLS turned off", nil, config.TLS{Cert: path("a.pem"), Key: path("a.key")}, true, true},
		{"other files", &config.TLS{Cert: path("c.pem"), Key: path("c.key")}, config.TLS{Cert: path("c.pem"), Key: path("c.key")}, true, false},
		{"one file for both", &config.TLS{Cert: path("b.pem"), Key: path("b.pem")}, config.TLS{Cert: path("b.pem"), Key: path("b.pem")}, false, false},
	}
	for _, s := range steps {
		before := c.ws
		c.follow(s.tls)
		if c.files != s.files {
			t.Errorf("%s: watching %+v, want %+v", s.name, c.files, s.files)
		}
		if c.cert == nil || (c.key != nil) != s.key {
			t.Errorf("%s: cert channel %v, key channel %v, want a cert channel and a key one: %v", s.name, c.cert != nil, c.key != nil, s.key)
		}
		if kept := before == c.ws; kept != s.kept {
			t.Errorf("%s: watchers kept %v, want %v", s.name, kept, s.kept)
		}
	}
}
