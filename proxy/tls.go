package proxy

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/affinityproxy/affinity/config"
)

// listenerTLS loads the listener's certificate; nil when c is nil (plain
// HTTP). The config offers HTTP/2 by ALPN, besides HTTP/1.1: http.Server
// serves h2 on a TLS listener whose config names it. TLS 1.2 is the floor:
// older versions have known attacks, and every client still in use speaks
// 1.2. Each handshake takes the pair the returned listenerCert holds, which
// a reload replaces (rotateCert).
func listenerTLS(c *config.TLS) (*tls.Config, *listenerCert, error) {
	if c == nil {
		return nil, nil, nil
	}
	cert, err := loadListenerCert(c)
	if err != nil {
		return nil, nil, err
	}
	lc := new(listenerCert)
	lc.cur.Store(cert)
	return &tls.Config{
		GetCertificate: lc.get,
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"h2", "http/1.1"},
	}, lc, nil
}

// listenerCert is the certificate and key the TLS listener serves. A reload
// reads the files again and swaps the pair whole, so that a handshake gets
// either the old pair or the new one, never a mix; connections already
// established keep the one they were made with.
type listenerCert struct {
	cur atomic.Pointer[tls.Certificate] // Leaf always set
}

// get is the listener's tls.Config.GetCertificate.
func (lc *listenerCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return lc.cur.Load(), nil
}

// loadListenerCert reads the pair c names, as config.LoadKeyPair does, with
// its leaf parsed, for the expiry the metrics show.
func loadListenerCert(c *config.TLS) (*tls.Certificate, error) {
	cert, err := config.LoadKeyPair(c)
	if err == nil && cert.Leaf == nil {
		cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0])
	}
	if err != nil {
		return nil, fmt.Errorf("proxy: tls: cert %q, key %q: %w", c.Cert, c.Key, err)
	}
	return &cert, nil
}

// rotateCert serves cert to new handshakes, when it is not the pair served
// already, and logs the change; it reports whether it changed. A pair
// outside its validity period is served all the same, with a warning, as
// Caddy and HAProxy do: refusing it would leave the previous pair, most
// often expired too, or at start no listener at all, and
// affinity_tls_cert_not_after_timestamp_seconds is there to alert on.
func (s *Server) rotateCert(cert *tls.Certificate) bool {
	old := s.cert.cur.Load()
	if bytes.Equal(old.Leaf.Raw, cert.Leaf.Raw) {
		// The same certificate: keep the pair, and its handshake caches.
		return false
	}
	s.cert.cur.Store(cert)
	s.log.Info("listener certificate rotated", zap.String("serial", cert.Leaf.SerialNumber.String()),
		zap.Time("not_after", cert.Leaf.NotAfter), zap.String("was_serial", old.Leaf.SerialNumber.String()))
	warnValidity(s.log, cert.Leaf)
	return true
}

// warnValidity logs a warning when leaf is not valid now.
func warnValidity(log *zap.Logger, leaf *x509.Certificate) {
	if now := time.Now(); now.After(leaf.NotAfter) || now.Before(leaf.NotBefore) {
		log.Warn("listener certificate is not valid now; serving it anyway",
			zap.String("serial", leaf.SerialNumber.String()),
			zap.Time("not_before", leaf.NotBefore), zap.Time("not_after", leaf.NotAfter))
	}
}

// ReloadCertificate reads the listener's certificate and key again, from
// the files the configuration in use names, and serves the pair to new
// handshakes. ReloadLoaded calls it when the config file is unchanged:
// certbot and cert-manager rewrite the files, or swap a symlink, and leave
// the config alone. A pair that does not load keeps the old one serving,
// and counts and logs as a failed reload; a new pair counts as a reload
// applied. Without TLS it does nothing.
func (s *Server) ReloadCertificate() error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	cfg := s.state.Load().cfg
	if s.cert == nil || cfg.TLS == nil {
		return nil
	}
	cert, err := loadListenerCert(cfg.TLS)
	if err == nil && s.closed {
		err = errClosed
	}
	if err != nil {
		s.reloads.failed.Add(1)
		s.logFailure(cfg.File, err)
		return err
	}
	if s.rotateCert(cert) {
		s.reloads.ok.Add(1)
	}
	return nil
}

// backendTLS returns the client TLS config of a pool's tls section.
func backendTLS(c *config.BackendTLS) (*tls.Config, error) {
	tc := &tls.Config{
		ServerName: c.ServerName,
		// Meant for tests against self-signed backends only; the config
		// reference says what it costs.
		InsecureSkipVerify: c.InsecureSkipVerify,
		MinVersion:         tls.VersionTLS12,
	}
	if c.CA != "" {
		roots, err := config.LoadCAs(c.CA)
		if err != nil {
			return nil, fmt.Errorf("ca: %w", err)
		}
		tc.RootCAs = roots
	}
	return tc, nil
}

// useBackendTLS gives each pool with a tls section (pools[i] is made from
// cfg.Pools[i]) a transport and a health check client verifying its
// backends as configured. The server's shared transport cannot: it has one
// TLS config, and it pools connections by address alone, so a pool that
// skips verification must not hand its connections to one that verifies.
// Pools with equal settings share a transport, and so keep-alive
// connections; pools without a tls section keep the shared one and the
// system's roots.
func useBackendTLS(cfg *config.Config, pools []*pool, log *zap.Logger) error {
	byTLS := map[config.BackendTLS]*backendTransport{}
	for i, pc := range cfg.Pools {
		if pc.TLS == nil {
			continue
		}
		tr, ok := byTLS[*pc.TLS]
		if !ok {
			tc, err := backendTLS(pc.TLS)
			if err != nil {
				return fmt.Errorf("pool %q: tls: %w", pc.Name, err)
			}
			tr = newBackendTransport(cfg.Timeouts, tc, log)
			byTLS[*pc.TLS] = tr
		}
		p := pools[i]
		p.transport = tr
		p.checkClient = newCheckClient()
		if ct, ok := p.checkClient.Transport.(*http.Transport); ok {
			ct.TLSClientConfig = tr.TLSClientConfig
		}
	}
	return nil
}
