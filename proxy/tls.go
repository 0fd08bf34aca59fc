package proxy

import (
	"crypto/tls"
	"fmt"
	"net/http"

	"github.com/affinityproxy/affinity/config"
)

// listenerTLS loads the listener's certificate; nil when c is nil (plain
// HTTP). The config offers HTTP/2 by ALPN, besides HTTP/1.1: http.Server
// serves h2 on a TLS listener whose config names it. TLS 1.2 is the floor:
// older versions have known attacks, and every client still in use speaks
// 1.2.
func listenerTLS(c *config.TLS) (*tls.Config, error) {
	if c == nil {
		return nil, nil
	}
	cert, err := config.LoadKeyPair(c)
	if err != nil {
		return nil, fmt.Errorf("proxy: tls: cert %q, key %q: %w", c.Cert, c.Key, err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"h2", "http/1.1"},
	}, nil
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
func useBackendTLS(cfg *config.Config, pools []*pool) error {
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
			tr = newBackendTransport(cfg.Timeouts, tc)
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
