package resolver

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"
)

// Extract returns the addresses in m's answer section that are records of
// type t (A or AAAA) of name, or of a name that name leads to through the
// answer's CNAME records. Records of other names are ignored: an answer
// can carry no address for a name it was not asked about.
func Extract(m *dns.Msg, name string, t uint16) []Record {
	owners := chain(m, name)
	var out []Record
	for _, rr := range m.Answer {
		if !owners[strings.ToLower(rr.Header().Name)] {
			continue
		}
		var ip []byte
		switch a := rr.(type) {
		case *dns.A:
			if t == dns.TypeA {
				ip = a.A.To4()
			}
		case *dns.AAAA:
			if t == dns.TypeAAAA {
				ip = a.AAAA.To16()
			}
		}
		if addr, ok := netip.AddrFromSlice(ip); ok && usable(addr) {
			out = append(out, Record{Addr: addr.Unmap()})
		}
	}
	return out
}

// usable rejects addresses that cannot be a backend: the unspecified
// address (which dials this host), multicast, broadcast, and link-local
// addresses: an IPv6 one cannot be dialled without the interface, which a
// record cannot give, and the IPv4 range holds cloud metadata services,
// which a record must not make the pool's clients reach.
func usable(a netip.Addr) bool {
	a = a.Unmap()
	return a.IsValid() && !a.IsUnspecified() && !a.IsMulticast() && !a.IsLinkLocalUnicast() &&
		a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// chain returns name, lower-cased, and every name it leads to through the
// CNAME records of m's answer, however they are ordered; a loop ends it.
func chain(m *dns.Msg, name string) map[string]bool {
	owners := map[string]bool{strings.ToLower(name): true}
	for grew := true; grew; {
		grew = false
		for _, rr := range m.Answer {
			c, ok := rr.(*dns.CNAME)
			if ok && owners[strings.ToLower(c.Hdr.Name)] && !owners[strings.ToLower(c.Target)] {
				owners[strings.ToLower(c.Target)] = true
				grew = true
			}
		}
	}
	return owners
}

// srvRecords returns the SRV records of name (or of a name a CNAME leads
// to) in m's answer, without those whose target is "." (RFC 2782: the
// service is not offered there), a port of 0 or a target that is not a
// host name.
func srvRecords(m *dns.Msg, name string) []*dns.SRV {
	owners := chain(m, name)
	var out []*dns.SRV
	for _, rr := range m.Answer {
		s, ok := rr.(*dns.SRV)
		if ok && owners[strings.ToLower(s.Hdr.Name)] && s.Port != 0 && isHostName(targetName(s.Target)) {
			out = append(out, s)
		}
	}
	return out
}

// lowestPriority returns the records of the lowest priority: RFC 2782's
// clients try the others only when none of those answers, and a balancer
// that spread its clients over them would send traffic to the backups.
func lowestPriority(srv []*dns.SRV) []*dns.SRV {
	if len(srv) == 0 {
		return nil
	}
	low := slices.MinFunc(srv, func(a, b *dns.SRV) int { return cmp.Compare(a.Priority, b.Priority) }).Priority
	return slices.DeleteFunc(slices.Clone(srv), func(s *dns.SRV) bool { return s.Priority != low })
}

// targetName is an SRV target as a backend's name holds it.
func targetName(t string) string { return strings.ToLower(strings.TrimSuffix(t, ".")) }

// isHostName accepts dot-separated labels of letters, digits, '-' and '_':
// what a backend's name may hold, where DNS allows any byte.
func isHostName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range []byte(label) {
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// sortRecords orders records by target, address and port, and drops
// repeats, so that equal answers compare equal however they were ordered.
func sortRecords(recs []Record) []Record {
	slices.SortFunc(recs, func(a, b Record) int {
		return cmp.Or(strings.Compare(a.Target, b.Target), a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port),
			cmp.Compare(a.Weight, b.Weight))
	})
	return slices.Compact(recs)
}
