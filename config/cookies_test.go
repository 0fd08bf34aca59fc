package config

import (
	"strings"
	"testing"
)

// Pools whose sticky cookies share a host are each given a name of their
// own by default, and a config that names one cookie for two pools on one
// host, or the application's cookie of another pool, loads with a warning
// at the name.
func TestCookieCollisions(t *testing.T) {
	const backends = `    backends: [{url: "http://127.0.0.1:9001"}]` + "\n"
	pool := func(name, balancer string) string {
		return "  " + name + ":\n    balancer: " + balancer + "\n" + backends
	}
	tests := []struct {
		name   string
		routes string
		pools  []string
		want   []string // warnings, each a prefix
	}{
		{
			"default names",
			`[{match: {path: /api/}, pool: api}, {pool: web}]`,
			[]string{pool("api", "{type: cookie}"), pool("web", "{type: cookie}")},
			nil,
		},
		{
			"one name, one host",
			`[{match: {path: /api/}, pool: api}, {pool: web}]`,
			[]string{pool("api", "{type: cookie, cookie: {name: SRV}}"), pool("web", "{type: cookie, cookie: {name: SRV}}")},
			[]string{`a.yaml:8:45: warning: pools.web.balancer.cookie.name: pool "web"'s sticky cookie SRV is pool "api"'s too, on the same host and path`},
		},
		{
			"a default name taken by another pool",
			`[{match: {path: /api/}, pool: api}, {pool: web}]`,
			[]string{pool("api", "{type: cookie}"), pool("web", "{type: cookie, cookie: {name: AFFINITY_api}}")},
			[]string{`a.yaml:8:45: warning: pools.web.balancer.cookie.name: pool "web"'s sticky cookie AFFINITY_api is pool "api"'s too`},
		},
		{
			"one name, hosts apart",
			`[{match: {host: a.example}, pool: api}, {match: {host: b.example}, pool: web}]`,
			[]string{pool("api", "{type: cookie, cookie: {name: SRV}}"), pool("web", "{type: cookie, cookie: {name: SRV}}")},
			nil,
		},
		{
			"one name, a wildcard host over the other",
			`[{match: {host: b.example}, pool: web}, {match: {host: "*.example"}, pool: api}]`,
			[]string{pool("api", "{type: cookie, cookie: {name: SRV}}"), pool("web", "{type: cookie, cookie: {name: SRV}}")},
			[]string{`a.yaml:8:45: warning: pools.web.balancer.cookie.name: pool "web"'s sticky cookie SRV is pool "api"'s too`},
		},
		{
			"one name and domain, hosts apart",
			`[{match: {host: a.example}, pool: api}, {match: {host: b.example}, pool: web}]`,
			[]string{pool("api", "{type: cookie, cookie: {name: SRV, domain: example}}"), pool("web", "{type: cookie, cookie: {name: SRV, domain: example}}")},
			[]string{`a.yaml:8:45: warning: pools.web.balancer.cookie.name: pool "web"'s sticky cookie SRV is pool "api"'s too`},
		},
		{
			"one name, paths apart",
			`[{match: {path: /api/}, pool: api}, {pool: web}]`,
			[]string{pool("api", "{type: cookie, cookie: {name: SRV, path: /api/}}"), pool("web", "{type: cookie, cookie: {name: SRV}}")},
			nil,
		},
		{
			"the application's cookie of another pool",
			`[{match: {path: /api/}, pool: api}, {pool: web}]`,
			[]string{pool("api", "{type: learn, learn: {cookie: JSESSIONID}}"), pool("web", "{type: cookie, cookie: {name: JSESSIONID}}")},
			[]string{`a.yaml:8:45: warning: pools.web.balancer.cookie.name: pool "web"'s sticky cookie JSESSIONID is the application's cookie of pool "api"`},
		},
		{
			"the application's cookie, hashed by another pool",
			`[{match: {path: /api/}, pool: api}, {pool: web}]`,
			[]string{pool("api", "{type: cookie, cookie: {name: SESSION}}"), pool("web", "{type: consistent-hash, hash: {key: \"cookie:SESSION\"}}")},
			[]string{`a.yaml:8:51: warning: pools.web.balancer.hash.key: pool "api"'s sticky cookie SESSION is the application's cookie of pool "web"`},
		},
		{
			"two pools on the application's cookie",
			`[{match: {path: /api/}, pool: api}, {pool: web}]`,
			[]string{pool("api", "{type: learn, learn: {cookie: JSESSIONID}}"), pool("web", "{type: learn, learn: {cookie: JSESSIONID}}")},
			nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := "listen: 127.0.0.1:8080\nroutes: " + tt.routes + "\npools:\n" + strings.Join(tt.pools, "")
			c, err := Parse("a.yaml", []byte(data))
			if err != nil {
				t.Fatalf("%v\n%s", err, data)
			}
			if len(c.Warnings) != len(tt.want) {
				t.Fatalf("warnings %v, want %d\n%s", c.Warnings, len(tt.want), data)
			}
			for i, w := range tt.want {
				if got := c.Warnings[i].Error(); !strings.HasPrefix(got, w) {
					t.Errorf("warning %q, want it to start %q", got, w)
				}
			}
			for _, p := range c.Pools {
				if p.Balancer.Type == "cookie" && !strings.Contains(data, "name: "+p.Balancer.Options.Cookie.Name) && p.Balancer.Options.Cookie.Name != DefaultCookiePrefix+p.Name {
					t.Errorf("pool %s: cookie %s, want %s%s", p.Name, p.Balancer.Options.Cookie.Name, DefaultCookiePrefix, p.Name)
				}
			}
		})
	}
}
