package config

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/affinityproxy/affinity/balancer"
)

// listener decodes what guards the client side: the server limits, TLS
// termination and the trusted proxies, starting from the defaults.
func (d *decoder) listener(top *section, c *Config) {
	c.Server = DefaultServer()
	if s := d.sub(top, "server", "idle_timeout", "max_body", "max_conns", "max_header_bytes", "min_body_rate", "min_body_rate_grace", "park_after", "read_header_timeout", "read_timeout", "send_timeout"); s != nil {
		if v, n := d.duration(s, "read_header_timeout", false); n != nil {
			c.Server.ReadHeaderTimeout = v
		}
		if v, n := d.duration(s, "read_timeout", true); n != nil {
			c.Server.ReadTimeout = v
		}
		if v, n := d.duration(s, "send_timeout", true); n != nil {
			c.Server.SendTimeout = v
		}
		if v, n := d.integer(s, "min_body_rate", 0, math.MaxInt32); n != nil {
			c.Server.MinBodyRate = int(v)
		}
		if v, n := d.duration(s, "min_body_rate_grace", false); n != nil {
			c.Server.MinBodyRateGrace = v
		}
		if v, n := d.duration(s, "idle_timeout", false); n != nil {
			c.Server.IdleTimeout = v
		}
		if v, n := d.duration(s, "park_after", true); n != nil {
			c.Server.ParkAfter = v
			if v > 0 && v >= c.Server.IdleTimeout {
				d.errorf(n, "server.park_after: %s must be less than idle_timeout (%s), or 0 to never park", v, c.Server.IdleTimeout)
			}
		}
		if v, n := d.integer(s, "max_header_bytes", MinHeaderBytes, MaxHeaderBytes); n != nil {
			c.Server.MaxHeaderBytes = int(v)
		}
		if v, n := d.integer(s, "max_body", 0, math.MaxInt64); n != nil {
			c.Server.MaxBody = v
		}
		if v, n := d.integer(s, "max_conns", 1, math.MaxInt32); n != nil {
			c.Server.MaxConns = int(v)
		}
	}
	if s := d.sub(top, "tls", "cert", "key"); s != nil {
		d.require(s, "cert", "key")
		t := &TLS{}
		if v, n := d.str(s, "cert"); n != nil {
			if v == "" {
				d.errorf(n, "tls.cert: must name a PEM file")
			}
			t.Cert = v
			d.mark("tls.cert", n)
		}
		if v, n := d.str(s, "key"); n != nil {
			if v == "" {
				d.errorf(n, "tls.key: must name a PEM file")
			}
			t.Key = v
			d.mark("tls.key", n)
		}
		c.TLS = t
	}
	seen := map[netip.Prefix]int{} // prefix → line
	for i, it := range d.list(top, "trusted_proxies") {
		path := fmt.Sprintf("trusted_proxies[%d]", i)
		if !d.scalar(it, path, "an address or CIDR", "!!str") {
			continue
		}
		p, err := parseTrustedProxy(it.Value)
		if err != nil {
			d.errorf(it, "%s: %v", path, err)
			continue
		}
		if line, dup := seen[p]; dup {
			d.errorf(it, "%s: duplicate %s (first at line %d)", path, p, line)
			continue
		}
		seen[p] = it.Line
		c.TrustedProxies = append(c.TrustedProxies, p)
	}
}

// parseTrustedProxy accepts a CIDR or a single address, which stands for
// itself alone. A CIDR with bits set past its length (10.0.0.1/8) is
// refused rather than masked: it is more likely a typo than meant.
func parseTrustedProxy(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR such as 10.0.0.0/8", s)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR such as 10.0.0.0/8", s)
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, fmt.Errorf("%q has address bits set past the prefix length; write %s", s, m)
	}
	if p.Addr().Is4In6() {
		// Peers are compared unmapped, as Go reports IPv4 peers.
		a := p.Addr().Unmap()
		bits := p.Bits() - 96
		if bits < 0 {
			return netip.Prefix{}, fmt.Errorf("%q covers more than the IPv4-mapped range; write an IPv4 CIDR", s)
		}
		return netip.PrefixFrom(a, bits), nil
	}
	return p, nil
}

// backendTLS decodes a pool's tls section, given the pool's backends or its
// discover section; nil when there is none and none is implied (see
// discoveredTLS).
func (d *decoder) backendTLS(pool *section, backends []Backend, disc *Discover) *BackendTLS {
	s := d.sub(pool, "tls", "ca", "insecure_skip_verify", "server_name")
	if s == nil {
		return discoveredTLS(nil, disc)
	}
	// Judged only when every URL was read, so that a mistyped one is not
	// reported twice.
	switch {
	case disc != nil && disc.Scheme == "http":
		d.errorf(s.at, "%s: applies to https backends, and discover.scheme is http", s.path)
	case len(backends) > 0 && !slices.ContainsFunc(backends, func(b Backend) bool { return b.URL == nil || b.URL.Scheme == "https" }):
		d.errorf(s.at, "%s: applies to https:// backends, and the pool has none", s.path)
	}
	t := &BackendTLS{}
	if v, n := d.str(s, "ca"); n != nil {
		if v == "" {
			d.errorf(n, "%s.ca: must name a PEM file", s.path)
		}
		t.CA = v
		d.mark(s.path+".ca", n)
	}
	if v, n := d.str(s, "server_name"); n != nil {
		if !isDNSName(v) && net.ParseIP(v) == nil {
			d.errorf(n, "%s.server_name: %q is not a host name or IP address", s.path, v)
		}
		t.ServerName = v
	}
	if v, n := d.boolean(s, "insecure_skip_verify"); n != nil {
		t.InsecureSkipVerify = v
		if v && t.CA != "" {
			d.errorf(n, "%s.insecure_skip_verify: verifying nothing makes ca pointless; remove one of them", s.path)
		}
	}
	return discoveredTLS(t, disc)
}

// cookieSecret decodes the key that signs a pool's sticky cookie.
func (d *decoder) cookieSecret(s *section, o *balancer.CookieOptions) {
	v, n := d.str(s, "secret")
	if n == nil {
		return
	}
	if len(v) < balancer.MinCookieSecret {
		// The value is a secret: the message gives its length only.
		d.errorf(n, "%s.secret: must be at least %d bytes, got %d", s.path, balancer.MinCookieSecret, len(v))
	}
	o.Secret = v
}
