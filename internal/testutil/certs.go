package testutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Certs are a certificate authority, and a server and a client certificate
// it signs, valid for an hour, as PEM files in a test's temporary
// directory. The server's holds 127.0.0.1 and the names given to NewCerts.
type Certs struct {
	CA                    string // the authority's certificate
	ServerCert, ServerKey string
	ClientCert, ClientKey string
	// Client is a TLS config that trusts the authority and presents the
	// client certificate.
	Client *tls.Config
}

// NewCerts makes a certificate authority and a server and a client
// certificate it signs.
func NewCerts(t testing.TB, serverNames ...string) *Certs {
	t.Helper()
	dir := t.TempDir()
	caKey, caDER := newCert(t, &x509.Certificate{
		Subject:               pkix.Name{CommonName: "affinity test CA"},
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}, nil, nil)
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	c := &Certs{CA: writePEM(t, dir, "ca.pem", "CERTIFICATE", caDER)}
	serverKey, serverDER := newCert(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "affinity test server"},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:    serverNames,
	}, ca, caKey)
	c.ServerCert = writePEM(t, dir, "server.pem", "CERTIFICATE", serverDER)
	c.ServerKey = writePEM(t, dir, "server-key.pem", "PRIVATE KEY", keyDER(t, serverKey))
	clientKey, clientDER := newCert(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "affinity test client"},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca, caKey)
	c.ClientCert = writePEM(t, dir, "client.pem", "CERTIFICATE", clientDER)
	c.ClientKey = writePEM(t, dir, "client-key.pem", "PRIVATE KEY", keyDER(t, clientKey))
	pair, err := tls.LoadX509KeyPair(c.ClientCert, c.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	c.Client = &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	return c
}

// newCert makes an ECDSA key and a certificate of tmpl for it, signed by
// parent's key, or self-signed when parent is nil; it returns the key and
// the certificate, DER-encoded.
func newCert(t testing.TB, tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(time.Hour)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	return key, der
}

// keyDER encodes key in PKCS #8.
func keyDER(t testing.TB, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// writePEM writes der as one PEM block of kind to dir/name and returns its
// path.
func writePEM(t testing.TB, dir, name, kind string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
