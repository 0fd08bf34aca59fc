package resolver

import (
	"context"
	"errors"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/affinityproxy/affinity/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func lookup(t *testing.T, r *Resolver, name, typ string) ([]Record, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return r.Lookup(ctx, name, typ)
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

// TestLookup asks a real DNS server (dnsmasq) on loopback.
func TestLookup(t *testing.T) {
	d := testutil.StartDNS(t, []string{
		"127.0.0.3 app.test", "127.0.0.2 app.test", "::1 app.test", "::1 v6.test",
		"127.0.0.5 b1.test", "127.0.0.6 b2.test", "127.0.0.7 backup.test",
	}, []string{
		"_http._tcp.app.test,b2.test,8082,0,10",
		"_http._tcp.app.test,b1.test,8081,0,30",
		"_http._tcp.app.test,backup.test,8083,1,10",
		"_http._tcp.none.test,nowhere.test,8080,0,10",
	})
	r, err := New(d.Addr)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, typ string
		want      []Record
		err       error
	}{
		{"app.test", TypeA, []Record{{Addr: addr("127.0.0.2")}, {Addr: addr("127.0.0.3")}, {Addr: addr("::1")}}, nil},
		{"APP.test.", TypeA, []Record{{Addr: addr("127.0.0.2")}, {Addr: addr("127.0.0.3")}, {Addr: addr("::1")}}, nil},
		{"app.test", TypeAAAA, []Record{{Addr: addr("::1")}}, nil},
		{"v6.test", TypeA, []Record{{Addr: addr("::1")}}, nil},
		{"_http._tcp.app.test", TypeSRV, []Record{
			{Target: "b1.test", Addr: addr("127.0.0.5"), Port: 8081, Weight: 30},
			{Target: "b2.test", Addr: addr("127.0.0.6"), Port: 8082, Weight: 10},
		}, nil},
		{"missing.test", TypeA, nil, ErrNoRecords},
		{"b1.test", TypeAAAA, nil, ErrNoRecords},
		{"_http._tcp.missing.test", TypeSRV, nil, ErrNoRecords},
	}
	for _, tt := range tests {
		t.Run(tt.name+"/"+tt.typ, func(t *testing.T) {
			got, err := lookup(t, r, tt.name, tt.typ)
			if !errors.Is(err, tt.err) || (tt.err == nil && err != nil) {
				t.Fatalf("Lookup error = %v, want %v", err, tt.err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Lookup = %v, want %v", got, tt.want)
			}
		})
	}
	// A target that does not exist has no address, and so no backend.
	if _, err := lookup(t, r, "_http._tcp.none.test", TypeSRV); !errors.Is(err, ErrNoRecords) {
		t.Errorf("SRV whose target does not exist: error %v, want ErrNoRecords", err)
	}
	d.Stop()
	if _, err := lookup(t, r, "app.test", TypeA); err == nil || errors.Is(err, ErrNoRecords) {
		t.Errorf("server down: error %v, want a failure that is not ErrNoRecords", err)
	}
}

func TestUnknownType(t *testing.T) {
	r, err := New("127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lookup(t, r, "app.test", "MX"); err == nil {
		t.Error("Lookup of an MX: no error")
	}
}

func mustRR(t testing.TB, s string) dns.RR {
	t.Helper()
	rr, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return rr
}

func TestExtract(t *testing.T) {
	answer := func(rrs ...string) *dns.Msg {
		m := new(dns.Msg)
		for _, s := range rrs {
			m.Answer = append(m.Answer, mustRR(t, s))
		}
		return m
	}
	tests := []struct {
		name string
		msg  *dns.Msg
		t    uint16
		want []Record
	}{
		{"direct", answer("app.test. 5 IN A 10.0.0.1"), dns.TypeA, []Record{{Addr: addr("10.0.0.1")}}},
		{"other name ignored", answer("evil.test. 5 IN A 10.0.0.9", "app.test. 5 IN A 10.0.0.1"), dns.TypeA,
			[]Record{{Addr: addr("10.0.0.1")}}},
		{"cname chain out of order", answer("b.test. 5 IN A 10.0.0.2", "a.test. 5 IN CNAME b.test.",
			"app.test. 5 IN CNAME a.test."), dns.TypeA, []Record{{Addr: addr("10.0.0.2")}}},
		{"cname loop", answer("app.test. 5 IN CNAME a.test.", "a.test. 5 IN CNAME app.test."), dns.TypeA, nil},
		{"type filter", answer("app.test. 5 IN AAAA ::2", "app.test. 5 IN A 10.0.0.1"), dns.TypeAAAA,
			[]Record{{Addr: addr("::2")}}},
		{"unusable", answer("app.test. 5 IN A 0.0.0.0", "app.test. 5 IN A 224.0.0.1", "app.test. 5 IN A 255.255.255.255",
			"app.test. 5 IN AAAA ::"), dns.TypeA, nil},
		{"link-local", answer("app.test. 5 IN A 169.254.169.254", "app.test. 5 IN A 10.0.0.1"), dns.TypeA,
			[]Record{{Addr: addr("10.0.0.1")}}},
		{"link-local v6", answer("app.test. 5 IN AAAA fe80::1", "app.test. 5 IN AAAA ::2"), dns.TypeAAAA,
			[]Record{{Addr: addr("::2")}}},
		{"mapped v4 in AAAA", answer("app.test. 5 IN AAAA ::ffff:10.0.0.1"), dns.TypeAAAA, []Record{{Addr: addr("10.0.0.1")}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Extract(tt.msg, "app.test.", tt.t); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Extract = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestSRVRecords(t *testing.T) {
	m := new(dns.Msg)
	for _, s := range []string{
		"_h._tcp.app.test. 5 IN SRV 0 10 8080 b1.test.",
		"_h._tcp.app.test. 5 IN SRV 0 20 8080 B2.Test.",
		"_h._tcp.app.test. 5 IN SRV 0 10 0 zero-port.test.",
		"_h._tcp.app.test. 5 IN SRV 0 10 8080 .",
		`_h._tcp.app.test. 5 IN SRV 0 10 8080 bad\032name.test.`,
		"_h._tcp.app.test. 5 IN SRV 5 10 8080 backup.test.",
		"_h._tcp.other.test. 5 IN SRV 0 10 8080 other.test.",
	} {
		m.Answer = append(m.Answer, mustRR(t, s))
	}
	var got []string
	for _, s := range lowestPriority(srvRecords(m, "_h._tcp.app.test.")) {
		got = append(got, targetName(s.Target))
	}
	if want := []string{"b1.test", "b2.test"}; !reflect.DeepEqual(got, want) {
		t.Errorf("SRV targets = %v, want %v", got, want)
	}
}

// FuzzExtract feeds any bytes that unpack as a DNS message to what reads
// its records: no panic, and only usable addresses, owned by the name or
// its aliases, come out.
func FuzzExtract(f *testing.F) {
	for _, s := range []string{"app.test. 5 IN A 10.0.0.1", "app.test. 5 IN CNAME a.test.",
		"app.test. 5 IN SRV 0 10 8080 b1.test."} {
		m := new(dns.Msg)
		m.SetQuestion("app.test.", dns.TypeA)
		m.Answer = append(m.Answer, mustRR(f, s))
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m := new(dns.Msg)
		if m.Unpack(b) != nil {
			return
		}
		for _, typ := range []uint16{dns.TypeA, dns.TypeAAAA} {
			for _, r := range Extract(m, "app.test.", typ) {
				if !usable(r.Addr) || r.Addr.Is4() != (typ == dns.TypeA) {
					t.Errorf("Extract gave %v for type %d", r.Addr, typ)
				}
			}
		}
		for _, s := range lowestPriority(srvRecords(m, "app.test.")) {
			if s.Port == 0 || !isHostName(targetName(s.Target)) {
				t.Errorf("srvRecords kept %v", s)
			}
		}
	})
}
