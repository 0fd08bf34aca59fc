package config

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/affinityproxy/affinity/balancer"
)

// maxSecretFile bounds the files the config names (ReadSmallFile): a
// password, a token, a CA bundle, a certificate or a key is far smaller, and a wrong path (a
// log, a disk image) is refused rather than read whole.
const maxSecretFile = 1 << 20

// redis decodes where a shared learn table lives into o, which holds
// defaults. The files it names (password_file, the tls section's) are read
// here, so that their contents are options like the others: a reload that
// reads other contents makes a new store.
func (d *decoder) redis(s *section, o *balancer.RedisOptions) {
	sentinel := d.sub(s, "sentinel", "addrs", "master", "password", "password_file", "username")
	switch n := d.val(s, "addrs"); {
	case sentinel == nil:
		d.require(s, "addrs")
	case n != nil:
		d.errorf(n, "%s.addrs: with sentinel, list the sentinels in sentinel.addrs; the master's address comes from them", s.path)
	}
	o.Addrs = d.addrs(s)
	if v, n := d.duration(s, "timeout", false); n != nil {
		o.Timeout = v
	}
	o.Username, o.Password = d.credentials(s)
	if v, n := d.integer(s, "db", 0, math.MaxInt32); n != nil {
		o.DB = int(v)
		if v != 0 && sentinel == nil && len(o.Addrs) > 1 {
			d.errorf(n, "%s.db: a Redis Cluster (two or more addrs) has database 0 only", s.path)
		}
	}
	if t := d.sub(s, "tls", "ca", "cert", "key", "server_name"); t != nil {
		o.TLS = d.redisTLS(t)
	}
	if sentinel != nil {
		d.require(sentinel, "addrs", "master")
		sn := &balancer.RedisSentinel{Addrs: d.addrs(sentinel)}
		if v, n := d.str(sentinel, "master"); n != nil {
			if v == "" {
				d.errorf(n, "%s.master: must name the master the sentinels watch", sentinel.path)
			}
			sn.Master = v
		}
		sn.Username, sn.Password = d.credentials(sentinel)
		o.Sentinel = sn
	}
}

// addrs decodes the list of host:port addresses under s's key "addrs".
func (d *decoder) addrs(s *section) []string {
	var addrs []string
	seen := map[string]int{} // address → line
	for i, it := range d.list(s, "addrs") {
		path := fmt.Sprintf("%s.addrs[%d]", s.path, i)
		if !d.scalar(it, path, "a host:port string", "!!str") {
			continue
		}
		if err := checkDialAddress(it.Value); err != nil {
			d.errorf(it, "%s: %v", path, err)
			continue
		}
		if line, dup := seen[it.Value]; dup {
			d.errorf(it, "%s: duplicate address %q (first at line %d)", path, it.Value, line)
			continue
		}
		seen[it.Value] = it.Line
		addrs = append(addrs, it.Value)
	}
	if n := s.vals["addrs"]; n != nil && n.Kind == yaml.SequenceNode && len(n.Content) == 0 {
		d.errorf(n, "%s.addrs: at least one address is required", s.path)
	}
	return addrs
}

// credentials decodes the username, password and password_file of s. The
// messages never show a password.
func (d *decoder) credentials(s *section) (user, password string) {
	user, un := d.str(s, "username")
	password, pn := d.str(s, "password")
	if pn != nil && password == "" {
		d.errorf(pn, "%s.password: must not be empty; leave it out for no AUTH", s.path)
	}
	if file, fn := d.str(s, "password_file"); fn != nil {
		path := s.path + ".password_file"
		if pn != nil {
			d.errorf(fn, "%s: password is given too; keep one of them", path)
		} else if data, ok := d.readFile(fn, path, file); ok {
			// Written by hand or by a secrets tool, the file usually
			// ends in a newline that is no part of the password.
			password = strings.TrimSuffix(strings.TrimSuffix(string(data), "\n"), "\r")
			if password == "" {
				d.errorf(fn, "%s: %s holds no password", path, file)
			}
		}
	}
	if un != nil && password == "" && (pn == nil && s.vals["password_file"] == nil) {
		d.errorf(un, "%s.username: needs password or password_file", s.path)
	}
	return user, password
}

// redisTLS decodes the tls section of redis, reading and checking the
// files it names.
func (d *decoder) redisTLS(s *section) *balancer.RedisTLS {
	t := &balancer.RedisTLS{}
	if file, n := d.str(s, "ca"); n != nil {
		if data, ok := d.readFile(n, s.path+".ca", file); ok {
			if !x509.NewCertPool().AppendCertsFromPEM(data) {
				d.errorf(n, "%s.ca: %s: %v", s.path, file, ErrNoCertificate)
			}
			t.CA = data
		}
	}
	if v, n := d.str(s, "server_name"); n != nil {
		if !isDNSName(v) && net.ParseIP(v) == nil {
			d.errorf(n, "%s.server_name: %q is not a host name or IP address", s.path, v)
		}
		t.ServerName = v
	}
	certFile, cn := d.str(s, "cert")
	keyFile, kn := d.str(s, "key")
	switch {
	case cn == nil && kn == nil:
	case kn == nil:
		d.errorf(cn, "%s.cert: needs key, the certificate's private key", s.path)
	case cn == nil:
		d.errorf(kn, "%s.key: needs cert, the client certificate", s.path)
	default:
		cert, certOK := d.readFile(cn, s.path+".cert", certFile)
		key, keyOK := d.readFile(kn, s.path+".key", keyFile)
		if !certOK || !keyOK {
			break
		}
		if _, err := tls.X509KeyPair(cert, key); err != nil {
			d.errorf(kn, "%s.key: %s and %s: %v", s.path, certFile, keyFile, err)
		}
		t.Cert, t.Key = cert, key
	}
	return t
}

// readFile reads the file the value n at path names, reporting at n why it
// cannot; false then.
func (d *decoder) readFile(n *yaml.Node, path, file string) ([]byte, bool) {
	if file == "" {
		d.errorf(n, "%s: must name a file", path)
		return nil, false
	}
	data, err := ReadSmallFile(file)
	if err != nil {
		d.errorf(n, "%s: %v", path, err)
		return nil, false
	}
	return data, true
}

// checkDialAddress accepts the host:port of a server to connect to: unlike
// a listen address, it needs a host and a port other than 0.
func checkDialAddress(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return fmt.Errorf("%q is not host:port", addr)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("%q: port must be a number from 1 to 65535", addr)
	}
	return nil
}
