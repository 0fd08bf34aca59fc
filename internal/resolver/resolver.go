// Package resolver looks up the A, AAAA and SRV records of a name in DNS,
// for a pool that takes its backends from them. The wire format is
// github.com/miekg/dns's; this package chooses the servers and names to
// ask (a given server, or /etc/resolv.conf's servers, search list and
// ndots), follows CNAME chains within an answer, keeps the SRV records of
// the lowest priority and finds their targets' addresses.
package resolver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"
)

// ErrNoRecords is returned when every name asked exists without records of
// the type, or does not exist (NXDOMAIN).
var ErrNoRecords = errors.New("no records")

// ResolvConf is the file New reads the system's resolver settings from.
const ResolvConf = "/etc/resolv.conf"

// The record types Lookup asks for.
const (
	TypeA    = "A"    // A and AAAA records
	TypeAAAA = "AAAA" // AAAA records only
	TypeSRV  = "SRV"  // SRV records, and the addresses of their targets
)

// Record is one backend found in DNS: an address, and for SRV the target
// it is the address of, the port and the weight.
type Record struct {
	// Target is an SRV record's target, lower-case and without the final
	// dot; empty for an A or AAAA record.
	Target string
	Addr   netip.Addr
	// Port and Weight are an SRV record's; 0 for A and AAAA.
	Port, Weight uint16
}

// Resolver asks DNS servers, in turn, until one answers.
type Resolver struct {
	servers []string // host:port
	// conf, when not nil, expands names by its search list and ndots;
	// nil: a name is taken as fully qualified.
	conf *dns.ClientConfig
}

// New returns a Resolver that asks server (ip:port), or the nameservers of
// /etc/resolv.conf with its search list and ndots when server is empty.
func New(server string) (*Resolver, error) {
	if server != "" {
		return &Resolver{servers: []string{server}}, nil
	}
	conf, err := dns.ClientConfigFromFile(ResolvConf)
	if err != nil {
		return nil, fmt.Errorf("resolver: %w", err)
	}
	if len(conf.Servers) == 0 {
		return nil, fmt.Errorf("resolver: %s names no nameserver", ResolvConf)
	}
	r := &Resolver{conf: conf}
	for _, s := range conf.Servers {
		r.servers = append(r.servers, net.JoinHostPort(s, conf.Port))
	}
	return r, nil
}

// Servers returns the servers r asks, in order.
func (r *Resolver) Servers() []string { return slices.Clone(r.servers) }

// Lookup returns the records of name of type typ (TypeA, TypeAAAA or
// TypeSRV), sorted; ctx bounds the whole lookup. Names are tried as the
// search list says, until one has records: ErrNoRecords when none has.
// A server's failure (no answer, SERVFAIL, REFUSED) moves on to the next
// server; when all fail, Lookup fails, so that a caller keeps what it had
// rather than take a partial answer for the truth.
func (r *Resolver) Lookup(ctx context.Context, name, typ string) ([]Record, error) {
	names := []string{dns.Fqdn(name)}
	if r.conf != nil {
		names = r.conf.NameList(name)
	}
	for _, n := range names {
		var recs []Record
		var err error
		switch typ {
		case TypeA:
			recs, err = r.addresses(ctx, n, dns.TypeA, dns.TypeAAAA)
		case TypeAAAA:
			recs, err = r.addresses(ctx, n, dns.TypeAAAA)
		case TypeSRV:
			recs, err = r.srv(ctx, n)
		default:
			return nil, fmt.Errorf("resolver: unknown record type %q", typ)
		}
		if err != nil {
			return nil, err
		}
		if len(recs) > 0 {
			return sortRecords(recs), nil
		}
	}
	return nil, fmt.Errorf("%s %s: %w", strings.TrimSuffix(name, "."), typ, ErrNoRecords)
}

// addresses returns the records of name of each of types (A, AAAA).
func (r *Resolver) addresses(ctx context.Context, name string, types ...uint16) ([]Record, error) {
	var out []Record
	for _, t := range types {
		m, err := r.exchange(ctx, name, t)
		if err != nil {
			return nil, err
		}
		out = append(out, Extract(m, name, t)...)
	}
	return out, nil
}

// srv returns the SRV records of name of the lowest priority, one Record per
// address of each target. A target's addresses are taken from the
// answer's additional section when it has them, else looked up.
func (r *Resolver) srv(ctx context.Context, name string) ([]Record, error) {
	m, err := r.exchange(ctx, name, dns.TypeSRV)
	if err != nil {
		return nil, err
	}
	var out []Record
	for _, s := range lowestPriority(srvRecords(m, name)) {
		target := dns.Fqdn(s.Target)
		extra := &dns.Msg{Answer: m.Extra}
		addrs := append(Extract(extra, target, dns.TypeA), Extract(extra, target, dns.TypeAAAA)...)
		if len(addrs) == 0 {
			if addrs, err = r.addresses(ctx, target, dns.TypeA, dns.TypeAAAA); err != nil {
				return nil, fmt.Errorf("SRV target %s: %w", s.Target, err)
			}
		}
		for _, a := range addrs {
			out = append(out, Record{Target: targetName(s.Target), Addr: a.Addr, Port: s.Port, Weight: s.Weight})
		}
	}
	return out, nil
}

// exchange asks the servers in turn for the records of name of type t,
// over UDP, and again over TCP when the answer was truncated; it returns
// the first answer that is a success or says the name does not exist.
func (r *Resolver) exchange(ctx context.Context, name string, t uint16) (*dns.Msg, error) {
	q := new(dns.Msg)
	q.SetQuestion(name, t)
	// Room for a few dozen addresses without falling back to TCP, within
	// the size that is not fragmented on common paths.
	q.SetEdns0(1232, false)
	var errs []error
	for _, server := range r.servers {
		m, err := ask(ctx, q, server)
		if err == nil && m.Rcode != dns.RcodeSuccess && m.Rcode != dns.RcodeNameError {
			err = fmt.Errorf("answered %s", dns.RcodeToString[m.Rcode])
		}
		if err == nil {
			return m, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", server, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("%s %s: %w", strings.TrimSuffix(name, "."), dns.TypeToString[t], errors.Join(errs...))
}

// ask sends q to server over UDP, then over TCP if the answer was
// truncated.
func ask(ctx context.Context, q *dns.Msg, server string) (*dns.Msg, error) {
	m, _, err := (&dns.Client{Net: "udp"}).ExchangeContext(ctx, q, server)
	if err == nil && m.Truncated {
		m, _, err = (&dns.Client{Net: "tcp"}).ExchangeContext(ctx, q, server)
	}
	return m, err
}
