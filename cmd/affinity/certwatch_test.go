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
