package config

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/affinityproxy/affinity/balancer"
)

// ErrNoCertificate is wrapped when a file that should hold PEM
// certificates holds none.
var ErrNoCertificate = errors.New("no PEM certificate found")

// resolveTimeout bounds the lookup of a listen address's host name.
const resolveTimeout = 5 * time.Second

// LoadChecked loads the config file at path and checks it against this host
// (Load, then Check): what serve starts with, and what validate and a
// reload check. The config is nil unless both pass.
func LoadChecked(path string) (*Config, error) {
	c, err := Load(path)
	if err != nil {
		return nil, err
	}
	if err := Check(c); err != nil {
		return nil, err
	}
	return c, nil
}

// Check does what serve does with a loaded config before it listens, short
// of listening: it reads and parses the listener's certificate and key,
// every pool's CA file and the admin token's file, resolves the listen and admin addresses, and finds
// them on one port. It starts nothing and binds nothing, so it cannot know
// that a port is taken, or that an address is not this host's (a proxy
// bound by IP_FREEBIND or ip_nonlocal_bind may listen on it anyway). Each
// problem is at the position of its key, as Load reports its own; the error
// is an ErrorList. What is unusual but not wrong is added to c.Warnings: an
// admin listener reachable from other hosts without a token.
func Check(c *Config) error {
	var errs ErrorList
	at := func(path, format string, args ...any) {
		p := c.at[path]
		errs = append(errs, &Error{File: c.File, Line: p.line, Col: p.col, Msg: path + ": " + fmt.Sprintf(format, args...)})
	}
	if c.TLS != nil {
		checkKeyPair(c.TLS, at)
	}
	for _, p := range c.Pools {
		if p.TLS == nil || p.TLS.CA == "" {
			continue
		}
		if _, err := LoadCAs(p.TLS.CA); err != nil {
			at("pools."+p.Name+".tls.ca", "%v", err)
		}
	}
	if f := c.Admin.TokenFile; f != "" {
		if _, err := readTokenFile(f); err != nil {
			at("admin.token_file", "%v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	listen, err := ResolveListen(ctx, c.Listen)
	if err != nil {
		at("listen", "%v", err)
	}
	own := map[string]BindAddress{}
	if err == nil {
		own["listen"] = listen
	}
	if c.Admin.Listen != "" {
		key := "admin"
		if _, ok := c.at["admin.listen"]; ok {
			key = "admin.listen"
		}
		admin, aerr := ResolveListen(ctx, c.Admin.Listen)
		switch {
		case aerr != nil:
			at(key, "%v", aerr)
		case err == nil && listen.Overlaps(admin):
			at(key, "%s is the port of listen (%s) on the same address; use another port", c.Admin.Listen, c.Listen)
		default:
			own["admin.listen"] = admin
		}
		if aerr == nil && !admin.IP.IsLoopback() && c.Admin.Token == "" && c.Admin.TokenFile == "" {
			p := c.at[key]
			c.Warnings = append(c.Warnings, &Error{File: c.File, Line: p.line, Col: p.col, Warning: true, Msg: fmt.Sprintf(
				"%s: %s is reachable from other hosts and no admin.token or admin.token_file is set: "+
					"the runtime API will refuse every write (403, so affinity ctl drain fails), and anyone who connects "+
					"reads the status and metrics; listen on loopback, or set a token", key, c.Admin.Listen)})
		}
	}
	checkSelfBackends(c, own, at)
	if len(errs) == 0 {
		return nil
	}
	errs.sort()
	return errs
}

// checkSelfBackends reports a backend whose URL is one of the proxy's own
// listening addresses (own, by key): requests sent there would come back
// to the proxy, through the listener in a loop, or to the admin API from
// any client. A backend host given as a name other than localhost is not
// looked up: it may resolve only where the proxy runs.
func checkSelfBackends(c *Config, own map[string]BindAddress, at func(path, format string, args ...any)) {
	for _, p := range c.Pools {
		for i, b := range p.Backends {
			if b.URL == nil {
				continue
			}
			ip, err := netip.ParseAddr(b.URL.Hostname())
			if b.URL.Hostname() == "localhost" {
				ip, err = netip.AddrFrom4([4]byte{127, 0, 0, 1}), nil
			}
			if err != nil {
				continue
			}
			port := b.URL.Port()
			if port == "" {
				port = map[string]string{"http": "80", "https": "443"}[b.URL.Scheme]
			}
			n, err := strconv.ParseUint(port, 10, 16)
			if err != nil {
				continue
			}
			ip = ip.Unmap()
			for _, key := range []string{"listen", "admin.listen"} {
				a, ok := own[key]
				if !ok || a.Port != uint16(n) {
					continue
				}
				if a.IP == ip || !a.IP.IsValid() && (ip.IsLoopback() || ip.IsUnspecified() || isLocal(ip)) {
					at(fmt.Sprintf("pools.%s.backends[%d].url", p.Name, i), "%s is the proxy's own %s address; a backend there loops back to the proxy",
						b.URL.Host, key)
				}
			}
		}
	}
}

// isLocal reports whether ip is an address of one of this host's
// interfaces.
func isLocal(ip netip.Addr) bool {
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Unmap() == ip {
			return true
		}
	}
	return false
}

// checkKeyPair loads the listener's certificate and key as serve does,
// reporting a problem of the certificate at tls.cert and one of the key, or
// of the pair, at tls.key.
func checkKeyPair(t *TLS, at func(path, format string, args ...any)) {
	certPEM, err := ReadSmallFile(t.Cert)
	if err != nil {
		at("tls.cert", "%v", err)
	}
	keyPEM, kerr := ReadSmallFile(t.Key)
	if kerr != nil {
		at("tls.key", "%v", kerr)
	}
	if err != nil || kerr != nil {
		return
	}
	if err := checkCertificate(t.Cert, certPEM); err != nil {
		at("tls.cert", "%v", err)
		return
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		at("tls.key", "%s: %v", t.Key, err)
	}
}

// LoadKeyPair loads the listener's certificate and key, each read as
// ReadSmallFile reads it.
func LoadKeyPair(t *TLS) (tls.Certificate, error) {
	certPEM, err := ReadSmallFile(t.Cert)
	if err != nil {
		return tls.Certificate{}, err
	}
	keyPEM, err := ReadSmallFile(t.Key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(certPEM, keyPEM)
}

// checkCertificate reports a file whose first PEM certificate is missing or
// does not parse.
func checkCertificate(file string, data []byte) error {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		switch {
		case b == nil:
			return fmt.Errorf("%s: %w", file, ErrNoCertificate)
		case b.Type != "CERTIFICATE":
			continue
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		return nil
	}
}

// LoadCAs reads a PEM file of CA certificates, as a pool's tls.ca; a file
// holding none is an error.
func LoadCAs(file string) (*x509.CertPool, error) {
	data, err := ReadSmallFile(file)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("%s: %w", file, ErrNoCertificate)
	}
	return roots, nil
}

// BindAddress is the address net.Listen("tcp", addr) binds for addr.
type BindAddress struct {
	// IP is the one address bound; the zero Addr stands for every
	// interface, which Go binds as one dual-stack socket whether addr says
	// "", 0.0.0.0 or [::].
	IP   netip.Addr
	Port uint16
}

// Overlaps reports whether a and b cannot both be bound: one port, on the
// same address or on every interface. Port 0 takes a free port, which never
// overlaps.
func (a BindAddress) Overlaps(b BindAddress) bool {
	return a.Port != 0 && a.Port == b.Port && (!a.IP.IsValid() || !b.IP.IsValid() || a.IP == b.IP)
}

// ResolveListen returns what net.Listen("tcp", addr) binds: the address
// itself, every interface for an empty or unspecified host, or for a host
// name the first IPv4 address it resolves to, else the first address.
func ResolveListen(ctx context.Context, addr string) (BindAddress, error) {
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return BindAddress{}, err
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil {
		return BindAddress{}, fmt.Errorf("port %q must be a number from 0 to 65535", portText)
	}
	b := BindAddress{Port: uint16(port)}
	if host == "" {
		return b, nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		ips, lerr := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		if lerr != nil {
			return BindAddress{}, fmt.Errorf("%q does not resolve: %w", host, lerr)
		}
		ip = ips[0]
		for _, a := range ips {
			if a.Unmap().Is4() {
				ip = a
				break
			}
		}
	}
	if ip = ip.Unmap(); !ip.IsUnspecified() {
		b.IP = ip
	}
	return b, nil
}

// warnAtBytes is the estimated balancer memory above which Load warns.
const warnAtBytes = 1 << 30

// warnings returns what is unusual in c: balancers whose tables would hold
// more than warnAtBytes between them, and pools whose cookies collide.
func (d *decoder) warnings(c *Config) ErrorList {
	return append(d.memoryWarnings(c), d.cookieWarnings(c)...)
}

// memoryWarnings warns of balancers whose tables would hold more than
// warnAtBytes between them.
func (d *decoder) memoryWarnings(c *Config) ErrorList {
	var total, largest int64
	var name string
	for _, p := range c.Pools {
		weights := make([]int, len(p.Backends))
		for i, b := range p.Backends {
			weights[i] = b.Weight
		}
		n := balancer.MemoryEstimate(p.Balancer.Type, p.Balancer.Options, weights)
		total += n
		if n > largest {
			largest, name = n, p.Name
		}
	}
	if total <= warnAtBytes {
		return nil
	}
	p := d.at["pools"]
	return ErrorList{{File: c.File, Line: p.line, Col: p.col, Warning: true, Msg: fmt.Sprintf(
		"pools: the balancers' tables would take about %s of memory (the largest, pool %q: %s); "+
			"lower virtual_nodes or learn.max_entries, or give weights a larger common divisor",
		bytesText(total), name, bytesText(largest))}}
}

// bytesText writes n bytes in MiB or GiB, to a tenth.
func bytesText(n int64) string {
	if n >= 1<<30 {
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
