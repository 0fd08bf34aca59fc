package config

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// membership reports a pool that names neither backends nor discover, or
// both.
func (d *decoder) membership(s *section) {
	_, backends := s.vals["backends"]
	_, discover := s.vals["discover"]
	switch {
	case backends && discover:
		d.errorf(s.keys["discover"], "%s: set backends or discover, not both", s.path)
	case backends:
		d.require(s, "backends")
	case discover:
		d.require(s, "discover")
	default:
		d.errorf(s.at, "%smissing required key \"backends\" (or \"discover\")", prefix(s.path))
	}
}

// discover decodes a pool's discover section, starting from the defaults;
// nil when there is none.
func (d *decoder) discover(pool *section) *Discover {
	s := d.sub(pool, "discover", "dns", "drain_timeout", "interval", "max_conns", "port", "resolver", "scheme", "type")
	if s == nil {
		return nil
	}
	c := DefaultDiscover()
	d.require(s, "dns")
	if v, n := d.str(s, "dns"); n != nil {
		if !isLookupName(v) {
			d.errorf(n, "%s.dns: %q is not a DNS name: at most 253 characters in dot-separated labels of 1 to 63 letters, digits, '-' and '_'", s.path, v)
		}
		c.DNS = v
	}
	typeOK := true
	if v, n := d.oneOf(s, "type", DiscoverA, DiscoverAAAA, DiscoverSRV); n != nil {
		c.Type = v
	} else if n := s.vals["type"]; n != nil && !isNull(n) {
		typeOK = false // reported by oneOf
	}
	port, pn := d.integer(s, "port", 1, 65535)
	switch {
	case pn != nil && c.Type == DiscoverSRV:
		d.errorf(pn, "%s.port: SRV records carry the port; remove it", s.path)
	case pn != nil:
		c.Port = int(port)
	case s.vals["port"] == nil && typeOK && c.Type != DiscoverSRV:
		d.errorf(s.at, "%s: missing required key \"port\" (%s records carry no port)", s.path, c.Type)
	}
	if v, n := d.oneOf(s, "scheme", "http", "https"); n != nil {
		c.Scheme = v
	} else if n := s.vals["scheme"]; n != nil && !isNull(n) {
		c.Scheme = "" // reported by oneOf; tls is not judged by it
	}
	if v, n := d.duration(s, "interval", false); n != nil {
		if v < MinDiscoverInterval {
			d.errorf(n, "%s.interval: must be at least %s, got %s", s.path, MinDiscoverInterval, n.Value)
		}
		c.Interval = v
	}
	if v, n := d.str(s, "resolver"); n != nil {
		addr, err := resolverAddress(v)
		if err != nil {
			d.errorf(n, "%s.resolver: %v", s.path, err)
		}
		c.Resolver = addr
	}
	if v, n := d.duration(s, "drain_timeout", true); n != nil {
		c.DrainTimeout = v
	}
	if v, n := d.integer(s, "max_conns", 0, MaxConns); n != nil {
		c.MaxConns = int(v)
	}
	return &c
}

// isLookupName accepts a DNS name to look up: at most 253 characters
// without the final dot, which may be written, in labels of 1 to 63 letters,
// digits, '-' and '_' (SRV names start with _service._proto).
func isLookupName(s string) bool {
	name := strings.TrimSuffix(s, ".")
	if len(name) > 253 || !isDNSName(name) {
		return false
	}
	for label := range strings.SplitSeq(name, ".") {
		if len(label) > 63 {
			return false
		}
	}
	return true
}

// resolverAddress returns the ip:port of a resolver written as an IP
// address, with or without a port (53 when without).
func resolverAddress(s string) (string, error) {
	if ip, err := netip.ParseAddr(s); err == nil {
		if ip.Zone() != "" {
			return "", fmt.Errorf("%q: an address with a zone is not supported", s)
		}
		return netip.AddrPortFrom(ip, 53).String(), nil
	}
	ap, err := netip.ParseAddrPort(s)
	switch {
	case err != nil:
		if host, _, serr := net.SplitHostPort(s); serr == nil && net.ParseIP(host) == nil {
			return "", fmt.Errorf("%q: the resolver is an IP address, with or without a port; a name would need a resolver itself", s)
		}
		return "", fmt.Errorf("%q is not an IP address, with or without a port", s)
	case ap.Port() == 0:
		return "", fmt.Errorf("%q: port must be from 1 to 65535", s)
	case ap.Addr().Zone() != "":
		return "", fmt.Errorf("%q: an address with a zone is not supported", s)
	}
	return ap.String(), nil
}

// discoveredTLS fills in, for a pool that discovers https backends, the
// name their certificates are verified against: the backends are dialled
// by address, and an address is rarely what a certificate holds. Unless
// tls.server_name says otherwise it is the discovered name, less the
// _service._proto labels of an SRV name (_https._tcp.app.example.com:
// app.example.com). t is the pool's tls section, or nil.
func discoveredTLS(t *BackendTLS, disc *Discover) *BackendTLS {
	if disc == nil || disc.Scheme != "https" {
		return t
	}
	if t == nil {
		t = &BackendTLS{}
	}
	if t.ServerName == "" {
		t.ServerName = serviceName(disc.DNS)
	}
	return t
}

// serviceName is a discovered name without its final dot and without the
// leading labels that start with '_' (the service and protocol of an SRV
// name).
func serviceName(name string) string {
	name = strings.TrimSuffix(name, ".")
	for strings.HasPrefix(name, "_") {
		_, rest, ok := strings.Cut(name, ".")
		if !ok {
			break
		}
		name = rest
	}
	return name
}
