package proxy

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"time"
)

// selfAddrs matches the addresses this proxy itself listens on: its
// listen and admin addresses. A backend there would be the proxy itself,
// whose requests loop through it (the listener) or reach the runtime API
// from the data plane (the admin listener), so discovered records there
// are refused.
type selfAddrs struct {
	exact map[netip.AddrPort]bool
	// wild holds the ports of listeners on the unspecified address (or
	// no host), which accept on every address of this host.
	wild  map[uint16]bool
	local map[netip.Addr]bool // this host's interface addresses
}

// resolveSelf bounds the lookup of a listen address given as a host name.
const resolveSelf = time.Second

// newSelfAddrs matches the host:port addresses of addrs; empty ones and
// ones that do not parse are skipped (validate has refused them).
func newSelfAddrs(addrs ...string) *selfAddrs {
	s := &selfAddrs{exact: map[netip.AddrPort]bool{}, wild: map[uint16]bool{}, local: map[netip.Addr]bool{}}
	for _, a := range addrs {
		host, p, err := net.SplitHostPort(a)
		if err != nil {
			continue
		}
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			continue
		}
		port := uint16(n)
		if ip, err := netip.ParseAddr(host); err == nil && !ip.IsUnspecified() {
			s.exact[netip.AddrPortFrom(ip.Unmap(), port)] = true
			continue
		} else if err == nil || host == "" {
			s.wild[port] = true
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), resolveSelf)
		ips, _ := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		cancel()
		for _, ip := range ips {
			s.exact[netip.AddrPortFrom(ip.Unmap(), port)] = true
		}
	}
	if len(s.wild) > 0 {
		ifaddrs, _ := net.InterfaceAddrs()
		for _, a := range ifaddrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				s.local[p.Addr().Unmap()] = true
			}
		}
	}
	return s
}

// has reports whether ap is one of the proxy's own listening addresses.
func (s *selfAddrs) has(ap netip.AddrPort) bool {
	if s == nil {
		return false
	}
	a := ap.Addr().Unmap()
	if s.exact[netip.AddrPortFrom(a, ap.Port())] {
		return true
	}
	return s.wild[ap.Port()] && (a.IsLoopback() || a.IsUnspecified() || s.local[a])
}
