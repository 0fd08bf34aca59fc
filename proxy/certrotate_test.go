package proxy

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// pairFiles is a certificate and its key in PEM files, and its serial.
type pairFiles struct {
	cert, key []byte
	serial    string
	notAfter  int64
}

func newPairFiles(t *testing.T) pairFiles {
	t.Helper()
	c := testutil.NewCerts(t)
	pair, err := tls.LoadX509KeyPair(c.ServerCert, c.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	p := pairFiles{serial: pair.Leaf.SerialNumber.String(), notAfter: pair.Leaf.NotAfter.Unix()}
	if p.cert, err = os.ReadFile(c.ServerCert); err != nil {
		t.Fatal(err)
	}
	if p.key, err = os.ReadFile(c.ServerKey); err != nil {
		t.Fatal(err)
	}
	return p
}

// servedSerial makes a new TLS connection through c and returns the serial
// of the certificate the proxy served on it.
func servedSerial(t *testing.T, c *http.Client, target string) string {
	t.Helper()
	resp, err := c.Get(target)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.TLS == nil {
		t.Fatalf("GET %s: %s over TLS %v, want 200 over TLS", target, resp.Status, resp.TLS != nil)
	}
	return resp.TLS.PeerCertificates[0].SerialNumber.String()
}

// certNotAfter returns the gauge of the served certificate's expiry.
func certNotAfter(t *testing.T, s *Server) int64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(collector{s})
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == "affinity_tls_cert_not_after_timestamp_seconds" {
			return int64(f.GetMetric()[0].GetGauge().GetValue())
		}
	}
	t.Fatal("no affinity_tls_cert_not_after_timestamp_seconds")
	return 0
}

// A reload reads the listener's certificate and key again, however they
// were changed, and new connections get the new pair while a connection
// made before keeps its own; a pair that does not load keeps the old one
// serving and counts as a failed reload.
func TestCertificateRotation(t *testing.T) {
	b := testutil.StartBackend(t, "a")
	dir := t.TempDir()
	// The config names the files through a symlinked directory, as
	// Kubernetes mounts a Secret and certbot's live/ links to archive/.
	current := filepath.Join(dir, "current")
	certPath, keyPath := filepath.Join(current, "cert.pem"), filepath.Join(current, "key.pem")
	writeFile := func(path string, data []byte) {
		t.Helper()
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// release writes p into a new directory and points current at it
	// with a rename, the way a symlink is swapped atomically.
	version := 0
	release := func(cert, key []byte) {
		t.Helper()
		version++
		v := filepath.Join(dir, fmt.Sprintf("v%d", version))
		if err := os.Mkdir(v, 0o700); err != nil {
			t.Fatal(err)
		}
		writeFile(filepath.Join(v, "cert.pem"), cert)
		if key != nil {
			writeFile(filepath.Join(v, "key.pem"), key)
		}
		tmp := filepath.Join(dir, "current.tmp")
		if err := os.Symlink(v, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, current); err != nil {
			t.Fatal(err)
		}
	}
	renameOver := func(path string, data []byte) {
		t.Helper()
		writeFile(path+".new", data)
		if err := os.Rename(path+".new", path); err != nil {
			t.Fatal(err)
		}
	}
	first := newPairFiles(t)
	release(first.cert, first.key)
	cfgPath := filepath.Join(dir, "affinity.yaml")
	cfgText := fmt.Sprintf("listen: 127.0.0.1:0\ntls: {cert: %q, key: %q}\npools:\n  web:\n    backends: [{url: %q, name: a}]\n",
		certPath, keyPath, b.URL)
	writeFile(cfgPath, []byte(cfgText))
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	s, u := startProxy(t, cfg, nil)
	u.Scheme = "https"
	target := u.String() + "/"
	insecure := &tls.Config{InsecureSkipVerify: true} // the serial is what is checked
	fresh := &http.Client{Transport: &http.Transport{TLSClientConfig: insecure, DisableKeepAlives: true}}
	keptTr := &http.Transport{TLSClientConfig: insecure, MaxConnsPerHost: 1}
	t.Cleanup(keptTr.CloseIdleConnections)
	kept := &http.Client{Transport: keptTr}
	if got := servedSerial(t, kept, target); got != first.serial {
		t.Fatalf("serial %s at start, want %s", got, first.serial)
	}

	other, mismatched := newPairFiles(t), newPairFiles(t)
	steps := []struct {
		name   string
		change func() pairFiles // returns the pair now in the files
		ok     bool             // the reload succeeds and serves that pair
	}{
		{"written in place", func() pairFiles {
			p := newPairFiles(t)
			writeFile(certPath, p.cert)
			writeFile(keyPath, p.key)
			return p
		}, true},
		{"renamed over", func() pairFiles {
			p := newPairFiles(t)
			renameOver(certPath, p.cert)
			renameOver(keyPath, p.key)
			return p
		}, true},
		{"symlink swapped", func() pairFiles {
			p := newPairFiles(t)
			release(p.cert, p.key)
			return p
		}, true},
		{"with the config changed too", func() pairFiles {
			p := newPairFiles(t)
			release(p.cert, p.key)
			writeFile(cfgPath, []byte(cfgText+"# changed\n"))
			return p
		}, true},
		{"key of another certificate", func() pairFiles {
			release(other.cert, mismatched.key)
			return other
		}, false},
		{"key missing", func() pairFiles {
			release(other.cert, nil)
			return other
		}, false},
		{"not PEM", func() pairFiles {
			release([]byte("garbage"), other.key)
			return other
		}, false},
		{"good again", func() pairFiles {
			release(other.cert, other.key)
			return other
		}, true},
	}
	serving := first
	for _, step := range steps {
		before := s.ReloadStats()
		p := step.change()
		err := s.ReloadFile(cfgPath)
		after := s.ReloadStats()
		if step.ok {
			if err != nil {
				t.Fatalf("%s: reload: %v", step.name, err)
			}
			serving = p
		} else if err == nil || after.Failed != before.Failed+1 || after.OK != before.OK {
			t.Errorf("%s: reload = %v, counts %+v then %+v: want an error counted as a failed reload",
				step.name, err, before, after)
		}
		if step.ok && after.OK != before.OK+1 {
			t.Errorf("%s: ok reloads %d then %d, want one more", step.name, before.OK, after.OK)
		}
		if got := servedSerial(t, fresh, target); got != serving.serial {
			t.Errorf("%s: a new connection got serial %s, want %s", step.name, got, serving.serial)
		}
		if got := certNotAfter(t, s); got != serving.notAfter {
			t.Errorf("%s: not_after gauge %d, want %d", step.name, got, serving.notAfter)
		}
		// The connection made at start is still served, with its pair.
		if got := servedSerial(t, kept, target); got != first.serial {
			t.Errorf("%s: the connection made at start now shows serial %s, want %s", step.name, got, first.serial)
		}
	}

	// Nothing changed: no reload is counted either way.
	before := s.ReloadStats()
	if err := s.ReloadFile(cfgPath); err != nil {
		t.Fatal(err)
	}
	if after := s.ReloadStats(); after.OK != before.OK || after.Failed != before.Failed {
		t.Errorf("unchanged files: counts %+v then %+v, want no change", before, after)
	}
}
