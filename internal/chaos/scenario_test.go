package chaos

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/harness"
)

func TestWithDefaultsIsTheIssueScenario(t *testing.T) {
	sc := Scenario{Binary: "affinity"}.withDefaults()
	if err := sc.validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	if sc.Fault != FaultKill || sc.Backends != 3 || sc.Clients != 50 || sc.Rate != 300 ||
		sc.Duration != 20*time.Second || sc.FaultAt != 5*time.Second || sc.RecoverAt != 12*time.Second {
		t.Errorf("defaults = %+v, want kill, 3 backends, 50 clients, 300/s, 20s, fault 5s, recover 12s", sc)
	}
	if got := sc.requests(); got != 6000 {
		t.Errorf("requests = %d, want 6000", got)
	}
	if got := sc.period(); got != time.Second/300 {
		t.Errorf("period = %v, want 1/300 s", got)
	}
	// Fields set are kept.
	set := Scenario{Binary: "x", Clients: 7, FaultAt: time.Second, Fault: FaultHang}.withDefaults()
	if set.Clients != 7 || set.FaultAt != time.Second || set.Fault != FaultHang {
		t.Errorf("withDefaults overwrote set fields: %+v", set)
	}
}

func TestValidate(t *testing.T) {
	base := Scenario{Binary: "affinity"}.withDefaults()
	tests := []struct {
		name   string
		change func(*Scenario)
		want   []string // fragments of the message; none: valid
	}{
		{name: "defaults", change: func(*Scenario) {}},
		{name: "no binary", change: func(s *Scenario) { s.Binary = "" }, want: []string{"Binary"}},
		{name: "unknown fault", change: func(s *Scenario) { s.Fault = "drop" }, want: []string{`Fault "drop"`}},
		{name: "one backend", change: func(s *Scenario) { s.Backends = 1 }, want: []string{"Backends 1"}},
		{name: "recovery before fault", change: func(s *Scenario) { s.RecoverAt = s.FaultAt }, want: []string{"RecoverAt"}},
		{name: "recovery after the end", change: func(s *Scenario) { s.RecoverAt = s.Duration }, want: []string{"Duration"}},
		{name: "too many requests", change: func(s *Scenario) { s.Rate = 1_000_000 }, want: []string{"at most"}},
		{name: "check timeout not below interval", change: func(s *Scenario) { s.HealthTimeout = s.HealthInterval }, want: []string{"HealthTimeout"}},
		{name: "negative timeout", change: func(s *Scenario) { s.ConnectTimeout = -1 }, want: []string{"ConnectTimeout"}},
		{name: "reloads", change: func(s *Scenario) { s.Reloads = 20 }},
		{name: "reloads too close", change: func(s *Scenario) { s.Reloads = 40 }, want: []string{"Reloads 40"}},
		{name: "negative reloads", change: func(s *Scenario) { s.Reloads = -1 }, want: []string{"Reloads -1"}},
		{
			name:   "every problem at once",
			change: func(s *Scenario) { s.Clients, s.Rise, s.PostEvery = -1, -2, -3 },
			want:   []string{"Clients -1", "Rise -2", "PostEvery -3"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc := base
			tt.change(&sc)
			err := sc.validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("validate = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, errScenario) {
				t.Fatalf("validate = %v, want errScenario", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("validate = %q, want it to mention %q", err, w)
				}
			}
		})
	}
}

func TestIsPostSpreadsOverClients(t *testing.T) {
	sc := Scenario{Clients: 4, PostEvery: 2}
	posts := make([]int, sc.Clients)
	total := 0
	// The load deals every client once per round, in any order.
	for k := range 40 { // 10 requests per client
		client := (k*3 + k/4) % sc.Clients
		if sc.isPost(k, client) {
			posts[client]++
			total++
		}
	}
	for c, n := range posts {
		if n != 5 {
			t.Errorf("client %d sent %d POSTs of 10, want 5", c, n)
		}
	}
	if total != 20 {
		t.Errorf("%d POSTs of 40, want 20", total)
	}
	if (Scenario{Clients: 4}).isPost(0, 0) {
		t.Error("PostEvery 0 sent a POST")
	}
}

// The generated config must mean what the scenario says to the real loader.
func TestConfigYAMLLoads(t *testing.T) {
	sc := Scenario{Binary: "affinity", HealthInterval: 700 * time.Millisecond, ConnectTimeout: 300 * time.Millisecond}.withDefaults()
	addrs := []string{"127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"}
	pc := harness.ProxyConfig{Listen: "127.0.0.1:9000", Admin: "127.0.0.1:8999"}
	for i, a := range addrs {
		pc.Backends = append(pc.Backends, harness.Member{Name: harness.BackendName(i + 1), Addr: a})
	}
	cfg, err := config.Parse("chaos.yaml", []byte(sc.configYAML(pc)))
	if err != nil {
		t.Fatalf("generated config does not load: %v\n%s", err, sc.configYAML(pc))
	}
	if cfg.Listen != "127.0.0.1:9000" || cfg.Admin.Listen != "127.0.0.1:8999" {
		t.Errorf("listen = %q, admin = %q", cfg.Listen, cfg.Admin.Listen)
	}
	if cfg.Timeouts.Connect != 300*time.Millisecond || cfg.Timeouts.ResponseHeader != 2*time.Second {
		t.Errorf("timeouts = %+v, want connect 300ms, response_header 2s", cfg.Timeouts)
	}
	if len(cfg.Pools) != 1 {
		t.Fatalf("%d pools, want 1", len(cfg.Pools))
	}
	p := cfg.Pools[0]
	if p.Balancer.Type != "cookie" || p.Balancer.Options.Cookie.Name != stickyCookie {
		t.Errorf("balancer = %s cookie %q, want cookie %q", p.Balancer.Type, p.Balancer.Options.Cookie.Name, stickyCookie)
	}
	for i, b := range p.Backends {
		if b.Name != pc.Backends[i].Name || b.URL.Host != addrs[i] || b.Weight != 1 {
			t.Errorf("backend %d = %s at %s weight %d, want %s at %s weight 1", i, b.Name, b.URL.Host, b.Weight, pc.Backends[i].Name, addrs[i])
		}
	}
	// The config of an odd revision differs in the first backend's weight
	// alone.
	pc.Revision = 3
	heavy, err := config.Parse("chaos.yaml", []byte(sc.configYAML(pc)))
	if err != nil {
		t.Fatalf("the reloaded config does not load: %v", err)
	}
	if w := heavy.Pools[0].Backends[0].Weight; w != 2 {
		t.Errorf("reloaded config: first weight %d, want 2", w)
	}
	heavy.Pools[0].Backends[0].Weight = 1
	heavy.Hash = cfg.Hash
	if !reflect.DeepEqual(heavy, cfg) {
		t.Errorf("the reloaded config differs in more than the first weight:\n%+v\n%+v", heavy, cfg)
	}
	hc := p.HealthCheck
	if hc == nil || hc.Path != "/healthz" || hc.Interval != 700*time.Millisecond || hc.Timeout != 400*time.Millisecond || hc.Rise != 2 || hc.Fall != 2 {
		t.Errorf("health_check = %+v, want /healthz every 700ms, timeout 400ms, rise 2, fall 2", hc)
	}
	if p.Passive == nil || p.Passive.Failures != 2 || p.Passive.Eject != time.Second {
		t.Errorf("passive = %+v, want 2 failures, eject 1s", p.Passive)
	}
	if p.Retries != config.DefaultRetries() {
		t.Errorf("retries = %+v, want the defaults", p.Retries)
	}
}
