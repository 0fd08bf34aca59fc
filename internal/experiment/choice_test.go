package experiment

import (
	"strings"
	"testing"
	"time"
)

func TestParseChoice(t *testing.T) {
	tests := []struct {
		entry string
		kind  entryKind
		want  string // the canonical entry; empty: an error
		err   string
	}{
		{"cookie", ofBalancer, "cookie", ""},
		{"  consistent-hash   load_factor=1.25 ", ofBalancer, "consistent-hash load_factor=1.25", ""},
		{"consistent-hash load_factor=1", ofBalancer, "", "want a number above 1"},
		{"consistent-hash load_factor=x", ofBalancer, "", "want a number above 1"},
		{"cookie load_factor=1.25", ofBalancer, "", "applies to consistent-hash only"},
		{"consistent-hash load_factor", ofBalancer, "", "want key=value"},
		{"consistent-hash speed=9", ofBalancer, "", `unknown option "speed"`},
		{"memory load_factor=1.25", ofStore, "", `unknown option "load_factor"`}, // a balancer's option on a store
		{"", ofBalancer, "", "empty entry"},
		{"token denylist=redis", ofStore, "token denylist=redis", ""},
		{"token denylist=memcached", ofStore, "", "want redis"},
		{"redis denylist=redis", ofStore, "", "applies to token only"},
		{"cookie denylist=redis", ofBalancer, "", `unknown option "denylist"`},
		{"client=nokey  retry=all", ofRun, "client=nokey retry=all", ""},
		{"mode=drain", ofRun, "mode=drain", ""},
		{"mode=restart", ofRun, "", "want remove or drain"},
		{"retry=idempotent", ofRun, "", "want safe or all"},
		{"cookie retry=all", ofRun, "", `want key=value`}, // a run's entry has no name
		{"cookie retry=all", ofBalancer, "", `unknown option "retry"`},
		{"load_factor=2", ofRun, "", `unknown option "load_factor"`},
		{" ", ofRun, "", "empty entry"},
	}
	for _, tt := range tests {
		c, err := parseChoice(tt.entry, tt.kind)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("parseChoice(%q) = %v, %v; want an error with %q", tt.entry, c, err, tt.err)
			}
			continue
		}
		if err != nil || c.String() != tt.want {
			t.Errorf("parseChoice(%q) = %q, %v; want %q", tt.entry, c, err, tt.want)
		}
	}
}

func TestCellEntries(t *testing.T) {
	bal, _ := parseChoice("consistent-hash load_factor=1.25", ofBalancer)
	store, _ := parseChoice("redis", ofStore)
	c := CellResult{Balancer: bal.name, Store: store.name, Variant: variantOf(bal, store)}
	if c.BalancerEntry() != "consistent-hash load_factor=1.25" || c.StoreEntry() != "redis" || c.Variant["load_factor"] != "1.25" {
		t.Errorf("entries %q × %q, variant %v", c.BalancerEntry(), c.StoreEntry(), c.Variant)
	}
	plain := CellResult{Balancer: "consistent-hash", Store: "redis"}
	res := run(plain, c)
	if got := cell(res, "consistent-hash", "redis"); got == nil || got.Variant != nil {
		t.Errorf("the bare name found %+v, want the cell without options", got)
	}
	if got := cell(res, "consistent-hash load_factor=1.25", "redis"); got == nil || got.Variant == nil {
		t.Errorf("the entry with options found %+v", got)
	}
	if variantOf(choice{name: "cookie"}, choice{name: "memory"}) != nil {
		t.Error("a cell without options has a variant")
	}
	run, _ := parseChoice("retry=all client=key", ofRun)
	c = CellResult{Balancer: "cookie", Store: "redis", Variant: variantOf(choice{name: "cookie"}, store, run)}
	if c.BalancerEntry() != "cookie" || c.StoreEntry() != "redis" || c.RunEntry() != "client=key retry=all" || c.option("mode", "none") != "none" {
		t.Errorf("entries %q × %q × %q", c.BalancerEntry(), c.StoreEntry(), c.RunEntry())
	}
}

func TestNeedsRedis(t *testing.T) {
	for store, want := range map[string]bool{
		"memory": false, "token": false, "redis": true, "cached-redis": true, "token denylist=redis": true,
	} {
		if got := needsRedis(store); got != want {
			t.Errorf("needsRedis(%q) = %v, want %v", store, got, want)
		}
	}
	flags := backendFlags(choice{name: StoreToken, opts: Variant{"denylist": "redis"}}, &Spec{Work: time.Millisecond}, &redisStore{addr: "127.0.0.1:6379"}, "s")
	if got := strings.Join(flags, " "); got != "--session-store token --work 1ms --redis-addr 127.0.0.1:6379 --token-secret s --token-denylist" {
		t.Errorf("backend flags %q", got)
	}
}
