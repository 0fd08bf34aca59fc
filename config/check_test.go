package config

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestCheck: what serve would refuse at start is refused by Check, each
// problem at its key's position.
func TestCheck(t *testing.T) {
	dir := t.TempDir()
	cert := filepath.Join(testdata, "tls", "cert.pem")
	key := filepath.Join(testdata, "tls", "key.pem")
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not PEM\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A key of no certificate here: the pair does not match.
	otherKey := filepath.Join(dir, "other-key.pem")
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(otherKey, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A FIFO nobody writes to, and a device without end: read as they
	// were, the first blocks Check for ever and the second until memory
	// runs out.
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.pem")
	if err := os.WriteFile(big, make([]byte, maxSecretFile+1), 0o600); err != nil {
		t.Fatal(err)
	}
	config := func(top, pool string) string {
		return "listen: 127.0.0.1:8080\n" + top + "pools:\n  web:\n    backends: [{url: \"https://127.0.0.1:9001\"}]\n" + pool
	}
	tests := []struct {
		name string
		data string
		want []string // every problem, without the file name; nil: none
	}{
		{"certificate, key and CA that load", config(fmt.Sprintf("tls: {cert: %q, key: %q}\n", cert, key), fmt.Sprintf("    tls: {ca: %q}\n", cert)), nil},
		{"missing certificate and key",
			config(fmt.Sprintf("tls: {cert: %q, key: %q}\n", missing, missing), ""),
			[]string{"2:13: tls.cert: open " + missing + ": no such file or directory", fmt.Sprintf("2:%d: tls.key: open %s: no such file or directory", 22+len(missing), missing)}},
		{"a certificate that is not PEM",
			config(fmt.Sprintf("tls:\n  cert: %q\n  key: %q\n", garbage, key), ""),
			[]string{"3:9: tls.cert: " + garbage + ": no PEM certificate found"}},
		{"a key that is not PEM",
			config(fmt.Sprintf("tls:\n  cert: %q\n  key: %q\n", cert, garbage), ""),
			[]string{"4:8: tls.key: " + garbage + ": tls: failed to find any PEM data in key input"}},
		{"a key that is not the certificate's",
			config(fmt.Sprintf("tls:\n  cert: %q\n  key: %q\n", cert, otherKey), ""),
			[]string{"4:8: tls.key: " + otherKey + ": tls: private key does not match public key"}},
		{"a missing CA",
			config("", fmt.Sprintf("    tls:\n      ca: %q\n", missing)),
			[]string{"6:11: pools.web.tls.ca: open " + missing + ": no such file or directory"}},
		{"a CA that is not PEM",
			config("", fmt.Sprintf("    tls:\n      ca: %q\n", garbage)),
			[]string{"6:11: pools.web.tls.ca: " + garbage + ": no PEM certificate found"}},
		{"admin on listen's port, every interface",
			"listen: \":8080\"\nadmin: 127.0.0.1:8080\npools:\n  web:\n    backends: [{url: \"http://127.0.0.1:9001\"}]\n",
			[]string{"2:8: admin: 127.0.0.1:8080 is the port of listen (:8080) on the same address; use another port"}},
		{"admin on listen's port, by name",
			"listen: 127.0.0.1:8080\nadmin:\n  listen: localhost:8080\npools:\n  web:\n    backends: [{url: \"http://127.0.0.1:9001\"}]\n",
			[]string{"3:11: admin.listen: localhost:8080 is the port of listen (127.0.0.1:8080) on the same address; use another port"}},
		{"admin on listen's port on another address",
			"listen: 127.0.0.1:8080\nadmin: 127.0.0.2:8080\npools:\n  web:\n    backends: [{url: \"http://127.0.0.1:9001\"}]\n", nil},
		{"an admin token file that reads",
			"listen: 127.0.0.1:8080\nadmin: {listen: 127.0.0.1:9090, token_file: " + tokenFile + "}\npools:\n  web:\n    backends: [{url: \"http://127.0.0.1:9001\"}]\n", nil},
		{"a missing admin token file",
			"listen: 127.0.0.1:8080\nadmin: {listen: 127.0.0.1:9090, token_file: " + missing + "}\npools:\n  web:\n    backends: [{url: \"http://127.0.0.1:9001\"}]\n",
			[]string{"2:45: admin.token_file: open " + missing + ": no such file or directory"}},
		{"an admin token file holding a short token",
			"listen: 127.0.0.1:8080\nadmin: {listen: 127.0.0.1:9090, token_file: " + garbage + "}\npools:\n  web:\n    backends: [{url: \"http://127.0.0.1:9001\"}]\n",
			[]string{"2:45: admin.token_file: " + garbage + ": the token must be at least 16 bytes long"}},
		{"a certificate and key that are a FIFO and a device",
			config(fmt.Sprintf("tls: {cert: %q, key: /dev/zero}\n", fifo), ""),
			[]string{"2:13: tls.cert: read " + fifo + ": not a regular file (a FIFO)", fmt.Sprintf("2:%d: tls.key: read /dev/zero: not a regular file (a device)", 22+len(fifo))}},
		{"a CA that is a device",
			config("", "    tls: {ca: /dev/zero}\n"),
			[]string{"5:15: pools.web.tls.ca: read /dev/zero: not a regular file (a device)"}},
		{"a CA too large to be one",
			config("", fmt.Sprintf("    tls: {ca: %q}\n", big)),
			[]string{fmt.Sprintf("5:15: pools.web.tls.ca: %s is larger than %d bytes", big, maxSecretFile)}},
		{"an admin token file that is a FIFO",
			"listen: 127.0.0.1:8080\nadmin: {listen: 127.0.0.1:9090, token_file: " + fifo + "}\npools:\n  web:\n    backends: [{url: \"http://127.0.0.1:9001\"}]\n",
			[]string{"2:45: admin.token_file: read " + fifo + ": not a regular file (a FIFO)"}},
		{"a backend that is the listener",
			"listen: 127.0.0.1:8080\npools:\n  web:\n    backends: [{url: \"http://127.0.0.1:9001\"}, {url: \"http://127.0.0.1:8080\"}]\n",
			[]string{"4:54: pools.web.backends[1].url: 127.0.0.1:8080 is the proxy's own listen address"}},
		{"a backend that is the admin listener on every interface",
			"listen: 127.0.0.1:8080\nadmin: \"[::]:9090\"\npools:\n  web:\n    backends: [{url: \"http://localhost:9090\"}]\n",
			[]string{"5:22: pools.web.backends[0].url: localhost:9090 is the proxy's own admin.listen address"}},
		{"a backend on the listener's port on another address",
			"listen: 127.0.0.1:80\npools:\n  web:\n    backends: [{url: \"http://127.0.0.2\"}]\n", nil},
		{"a listen host that does not resolve",
			"listen: no-such-host.invalid:8080\npools:\n  web:\n    backends: [{url: \"http://127.0.0.1:9001\"}]\n",
			[]string{`1:9: listen: "no-such-host.invalid" does not resolve: `}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("a.yaml", []byte(tt.data))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			err = Check(c)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				return
			}
			var list ErrorList
			if !errors.As(err, &list) || len(list) != len(tt.want) {
				t.Fatalf("Check = %v, want %d problems", err, len(tt.want))
			}
			for i, e := range list {
				if got := strings.TrimPrefix(e.Error(), "a.yaml:"); !strings.HasPrefix(got, tt.want[i]) {
					t.Errorf("problem %d\n%s\nwant it to start with\n%s", i, got, tt.want[i])
				}
			}
		})
	}
}

func TestResolveListen(t *testing.T) {
	loop := netip.MustParseAddr("127.0.0.1")
	tests := []struct {
		addr string
		want BindAddress
	}{
		{":8080", BindAddress{Port: 8080}},
		{"0.0.0.0:8080", BindAddress{Port: 8080}},
		{"[::]:8080", BindAddress{Port: 8080}},
		{"127.0.0.1:8080", BindAddress{IP: loop, Port: 8080}},
		{"[::ffff:127.0.0.1]:8080", BindAddress{IP: loop, Port: 8080}},
		{"localhost:8080", BindAddress{IP: loop, Port: 8080}},
		{"[::1]:0", BindAddress{IP: netip.MustParseAddr("::1")}},
	}
	for _, tt := range tests {
		got, err := ResolveListen(context.Background(), tt.addr)
		if err != nil || got != tt.want {
			t.Errorf("ResolveListen(%q) = %+v, %v; want %+v", tt.addr, got, err, tt.want)
		}
	}
	for _, bad := range []string{"8080", "host:http", ":65536"} {
		if _, err := ResolveListen(context.Background(), bad); err == nil {
			t.Errorf("ResolveListen(%q) succeeded", bad)
		}
	}
}

func TestOverlaps(t *testing.T) {
	any80 := BindAddress{Port: 80}
	one80 := BindAddress{IP: netip.MustParseAddr("127.0.0.1"), Port: 80}
	two80 := BindAddress{IP: netip.MustParseAddr("127.0.0.2"), Port: 80}
	one81 := BindAddress{IP: netip.MustParseAddr("127.0.0.1"), Port: 81}
	tests := []struct {
		a, b BindAddress
		want bool
	}{
		{any80, one80, true}, {one80, any80, true}, {one80, one80, true}, {any80, any80, true},
		{one80, two80, false}, {one80, one81, false}, {BindAddress{}, BindAddress{}, false},
	}
	for _, tt := range tests {
		if got := tt.a.Overlaps(tt.b); got != tt.want {
			t.Errorf("%+v.Overlaps(%+v) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

// TestMemoryWarning: a config whose balancers would take gigabytes loads,
// with a warning at pools; an ordinary one has none.
func TestMemoryWarning(t *testing.T) {
	var b strings.Builder
	b.WriteString("listen: 127.0.0.1:8080\nroutes: [{pool: p0}]\npools:\n")
	// Weights 1, 2 and 1000 take a ring of 160,480 points: about 3 MiB
	// with its index.
	for i := range 400 {
		fmt.Fprintf(&b, "  p%d:\n    balancer: {type: consistent-hash, hash: {key: ip}}\n    backends:\n", i)
		for j, w := range []int{1, 2, 1000} {
			fmt.Fprintf(&b, "      - {url: \"http://127.0.0.1:%d\", weight: %d}\n", 9001+j, w)
		}
	}
	c, err := Parse("big.yaml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	want := `big.yaml:3:1: warning: pools: the balancers' tables would take about 1.1 GiB of memory (the largest, pool "p0": 2.8 MiB)`
	if len(c.Warnings) != 1 || !strings.HasPrefix(c.Warnings[0].Error(), want) {
		t.Errorf("warnings %v, want one starting %q", c.Warnings, want)
	}
	full, err := Load(filepath.Join(testdata, "config", "valid", "full.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(full.Warnings) != 0 {
		t.Errorf("warnings %v for an ordinary config", full.Warnings)
	}
}

// TestAdminExposureWarning: an admin listener reachable from other hosts
// without a token is a warning of Check, at its key: the runtime API would
// refuse every write.
func TestAdminExposureWarning(t *testing.T) {
	const pools = "pools:\n  web:\n    backends: [{url: \"http://127.0.0.1:9001\"}]\n"
	tests := []struct {
		admin string
		want  string // the warning's start, without the file name; "" for none
	}{
		{"admin: \":9090\"\n", "2:8: warning: admin: :9090 is reachable from other hosts and no admin.token or admin.token_file is set: the runtime API will refuse every write (403"},
		{"admin: 0.0.0.0:9090\n", "2:8: warning: admin: 0.0.0.0:9090 is reachable from other hosts"},
		{"admin: \"[::]:9090\"\n", "2:8: warning: admin: [::]:9090 is reachable from other hosts"},
		{"admin:\n  listen: 0.0.0.0:9090\n  pprof: true\n", "3:11: warning: admin.listen: 0.0.0.0:9090 is reachable from other hosts"},
		{"admin: 127.0.0.1:9090\n", ""},
		{"admin: \"[::1]:9090\"\n", ""},
		{"admin: localhost:9090\n", ""},
		{"admin: {listen: 0.0.0.0:9090, token: 0123456789abcdef}\n", ""},
		{"", ""},
	}
	for _, tt := range tests {
		c, err := Parse("a.yaml", []byte("listen: 127.0.0.1:8080\n"+tt.admin+pools))
		if err != nil {
			t.Fatalf("%q: %v", tt.admin, err)
		}
		if err := Check(c); err != nil {
			t.Fatalf("%q: Check: %v", tt.admin, err)
		}
		switch {
		case tt.want == "" && len(c.Warnings) != 0:
			t.Errorf("%q: warnings %v, want none", tt.admin, c.Warnings)
		case tt.want != "" && (len(c.Warnings) != 1 || !strings.HasPrefix(strings.TrimPrefix(c.Warnings[0].Error(), "a.yaml:"), tt.want)):
			t.Errorf("%q: warnings %v, want one starting %q", tt.admin, c.Warnings, tt.want)
		}
	}
}
