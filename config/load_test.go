package config

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"io/fs"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/balancer"
)

var update = flag.Bool("update", false, "rewrite the golden .err files of testdata/config/invalid")

// testdata is the repository's testdata directory, seen from this package.
var testdata = filepath.Join("..", "testdata")

func TestLoadValid(t *testing.T) {
	tests := map[string]func(t *testing.T, c *Config){
		"minimal.yaml": func(t *testing.T, c *Config) {
			check(t, "listen", c.Listen, "127.0.0.1:8080")
			check(t, "admin", c.Admin, Admin{})
			check(t, "log", c.Log, DefaultLog())
			check(t, "timeouts", c.Timeouts, DefaultTimeouts())
			check(t, "shutdown timeout", c.ShutdownTimeout, DefaultShutdownTimeout)
			check(t, "drain timeout", c.DrainTimeout, DefaultDrainTimeout)
			check(t, "implied route", c.Routes, []Route{{Pool: "web"}})
			check(t, "server", c.Server, DefaultServer())
			check(t, "trusted proxies", c.TrustedProxies, []netip.Prefix(nil))
			check(t, "tls", c.TLS, (*TLS)(nil))
			p := onlyPool(t, c, "web")
			check(t, "balancer", p.Balancer, DefaultBalancer("web"))
			check(t, "backend tls", p.TLS, (*BackendTLS)(nil))
			check(t, "retries", p.Retries, Retries{Count: 2, MaxBody: 65536})
			check(t, "keep-alive off", p.DisableKeepAlives, false)
			check(t, "health check", p.HealthCheck, (*HealthCheck)(nil))
			check(t, "passive", p.Passive, (*Passive)(nil))
			check(t, "queue", p.Queue, Queue{Max: DefaultQueueMax, Timeout: DefaultQueueTimeout})
			check(t, "backends", backendSummary(p), []string{"127.0.0.1:9001 http://127.0.0.1:9001 1"})
			check(t, "states", backendStates(p), []State{StateReady})
		},
		"full.yaml": func(t *testing.T, c *Config) {
			check(t, "listen", c.Listen, "0.0.0.0:8080")
			check(t, "admin", c.Admin, Admin{Listen: "127.0.0.1:9090", Pprof: true, Token: "0123456789abcdef-admin"})
			check(t, "drain timeout", c.DrainTimeout, 10*time.Minute)
			check(t, "log", c.Log, Log{Level: "debug", Format: "json", Access: true, AccessSample: 0.25})
			check(t, "timeouts", c.Timeouts, Timeouts{Connect: time.Second, ResponseHeader: 15 * time.Second, ResponseBody: 2 * time.Minute, IdleConn: time.Minute})
			check(t, "shutdown timeout", c.ShutdownTimeout, 10*time.Second)
			check(t, "server", c.Server, Server{
				ReadHeaderTimeout: 5 * time.Second, ReadTimeout: time.Minute, IdleTimeout: 30 * time.Second,
				ParkAfter: 5 * time.Second, MaxHeaderBytes: 16384, MaxBody: 0, MaxConns: 5000,
				SendTimeout: 2 * time.Minute, MinBodyRate: 1024, MinBodyRateGrace: 10 * time.Second,
			})
			check(t, "trusted proxies", c.TrustedProxies, []netip.Prefix{
				netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("2001:db8::/32"),
			})
			check(t, "tls", c.TLS, &TLS{Cert: "testdata/tls/cert.pem", Key: "testdata/tls/key.pem"})
			check(t, "routes", c.Routes, []Route{
				{Match: Match{Host: "shop.example.com", Path: "/api/"}, Pool: "api"},
				{Match: Match{Host: "*.example.com"}, Pool: "api"},
				{Match: Match{Path: "/static/"}, Pool: "web"},
				{Pool: "web"},
			})
			check(t, "pool order", poolNames(c), []string{"web", "api"})
			web := c.Pool("web")
			check(t, "web balancer", web.Balancer.Type, "cookie")
			check(t, "web cookie", web.Balancer.Options.Cookie, balancer.CookieOptions{
				Name: "SHOP_AFFINITY", Path: "/shop", Domain: "example.com", MaxAge: 3600,
				Secure: true, HTTPOnly: false, SameSite: http.SameSiteNoneMode, Secret: "correct horse battery staple",
			})
			check(t, "web tls", web.TLS, &BackendTLS{CA: "testdata/tls/cert.pem", ServerName: "web.internal"})
			check(t, "web backends", backendSummary(web), []string{
				"web-1 http://127.0.0.1:9001 3",
				"web2.internal:443 https://web2.internal 1000",
				"[::1]:9003 http://[::1]:9003/ 1",
			})
			check(t, "web states", backendStates(web), []State{StateReady, StateDrain, StateMaint})
			check(t, "web health check", web.HealthCheck, &HealthCheck{
				Path: "/ready", Interval: 10 * time.Second, Timeout: 500 * time.Millisecond, Rise: 1, Fall: 5,
				StatusMin: 200, StatusMax: 200, Body: "ok", Host: "health.internal",
			})
			check(t, "web passive", web.Passive, &Passive{Failures: 5, Eject: 30 * time.Second, MaxEject: 10 * time.Minute, OnStatus: []int{502, 503, 504}})
			check(t, "web retries", web.Retries, Retries{Count: 0, MaxBody: 0})
			check(t, "web queue", web.Queue, Queue{Max: 20, Timeout: 2 * time.Second})
			check(t, "web max_conns", []int{web.Backends[0].MaxConns, web.Backends[1].MaxConns}, []int{50, 0})
			api := c.Pool("api")
			check(t, "api balancer", api.Balancer.Type, "consistent-hash")
			check(t, "api hash", api.Balancer.Options.Hash, balancer.HashOptions{Key: "header:X-User-ID", VirtualNodes: 500, LoadFactor: 1.25})
			check(t, "api backends", backendSummary(api), []string{"api-a http://10.0.0.1:8000 1", "api-b http://10.0.0.2:8000 2"})
			check(t, "api retries", api.Retries, Retries{Count: 10, MaxBody: 1 << 20})
			check(t, "web keep-alive off", web.DisableKeepAlives, false)
			check(t, "api keep-alive off", api.DisableKeepAlives, true)
		},
		"yaml12.yaml": func(t *testing.T, c *Config) {
			p := onlyPool(t, c, "web")
			check(t, "backends", backendSummary(p), []string{strings.Repeat("é", 128) + " http://127.0.0.1:9001 10"})
		},
		"admin-address.yaml": func(t *testing.T, c *Config) {
			check(t, "admin", c.Admin, Admin{Listen: "[::1]:9090"})
		},
		"admin-token-file.yaml": func(t *testing.T, c *Config) {
			check(t, "admin", c.Admin, Admin{Listen: "0.0.0.0:9090", TokenFile: "testdata/config/admin-token"})
			check(t, "drain timeout", c.DrainTimeout, time.Duration(0))
			check(t, "states", backendStates(onlyPool(t, c, "web")), []State{StateReady})
		},
		"round-robin.yaml": func(t *testing.T, c *Config) {
			check(t, "listen", c.Listen, ":8080")
			p := onlyPool(t, c, "app")
			check(t, "balancer", p.Balancer.Type, "round-robin")
			check(t, "backends", backendSummary(p), []string{
				"app-1:8000 http://app-1:8000 2",
				"app-2:8000 http://app-2:8000 1",
				"app-3:443 https://app-3 1",
			})
		},
		"cookie.yaml": func(t *testing.T, c *Config) {
			p := onlyPool(t, c, "shop")
			want := DefaultBalancer("shop").Options.Cookie
			want.Name, want.SameSite = "SID_PIN", http.SameSiteStrictMode
			check(t, "balancer", p.Balancer.Type, "cookie")
			check(t, "cookie", p.Balancer.Options.Cookie, want)
		},
		"discover.yaml": func(t *testing.T, c *Config) {
			web, api := c.Pool("web"), c.Pool("api")
			check(t, "web backends", len(web.Backends), 0)
			check(t, "web discover", web.Discover, &Discover{DNS: "app.default.svc.cluster.local", Type: DiscoverA,
				Port: 8080, Scheme: "http", Interval: DefaultDiscoverInterval, DrainTimeout: DefaultDiscoverDrainTimeout})
			check(t, "web tls", web.TLS, (*BackendTLS)(nil))
			check(t, "web slow start", web.SlowStart, 30*time.Second)
			check(t, "api slow start", api.SlowStart, time.Duration(0))
			check(t, "api discover", api.Discover, &Discover{DNS: "_https._tcp.api.service.consul.", Type: DiscoverSRV,
				Scheme: "https", Interval: time.Second, Resolver: "127.0.0.1:53", MaxConns: 64})
			// Dialled by address, verified against the service's name.
			check(t, "api tls", api.TLS, &BackendTLS{ServerName: "api.service.consul"})
		},
		"learn.yaml": func(t *testing.T, c *Config) {
			p := onlyPool(t, c, "app")
			want := DefaultBalancer("app").Options.Learn
			want.Cookie = "JSESSIONID"
			check(t, "balancer", p.Balancer.Type, "learn")
			check(t, "learn", p.Balancer.Options.Learn, want)
		},
		"learn-redis.yaml": func(t *testing.T, c *Config) {
			p := onlyPool(t, c, "app")
			check(t, "learn", p.Balancer.Options.Learn, balancer.LearnOptions{
				Cookie: "PHPSESSID", MaxEntries: 500000, TTL: 2 * time.Hour, Store: "redis",
				Redis: balancer.RedisOptions{Addrs: []string{"10.0.0.5:7000", "redis-2.internal:7001"}, Timeout: 20 * time.Millisecond},
			})
		},
		"learn-sentinel.yaml": func(t *testing.T, c *Config) {
			p := onlyPool(t, c, "app")
			check(t, "redis", p.Balancer.Options.Learn.Redis, balancer.RedisOptions{
				Sentinel: &balancer.RedisSentinel{
					Master: "sessions", Addrs: []string{"10.0.0.5:26379", "10.0.0.6:26379", "sentinel-3.internal:26379"},
					Password: "sentinel-secret",
				},
				Timeout: DefaultRedisTimeout, Username: "affinity", Password: "redis-secret", DB: 3,
				TLS: &balancer.RedisTLS{ServerName: "redis.internal"},
			})
		},
		"consistent-hash.yaml": func(t *testing.T, c *Config) {
			p := onlyPool(t, c, "cache")
			check(t, "balancer", p.Balancer.Type, "consistent-hash")
			check(t, "hash", p.Balancer.Options.Hash, balancer.HashOptions{Key: "query:user", VirtualNodes: 160, LoadFactor: 0})
			check(t, "backends", len(p.Backends), 3)
		},
		"empty-sections.yaml": func(t *testing.T, c *Config) {
			check(t, "server", c.Server, DefaultServer())
			check(t, "trusted proxies", c.TrustedProxies, []netip.Prefix(nil))
			check(t, "tls", c.TLS, (*TLS)(nil))
			check(t, "admin", c.Admin, Admin{})
			check(t, "log", c.Log, DefaultLog())
			check(t, "timeouts", c.Timeouts, DefaultTimeouts())
			p := onlyPool(t, c, "web")
			hc, passive := DefaultHealthCheck(), DefaultPassive()
			check(t, "health check", p.HealthCheck, &hc)
			check(t, "passive", p.Passive, &passive)
			check(t, "retries", p.Retries, DefaultRetries())
			check(t, "backend tls", p.TLS, (*BackendTLS)(nil))
		},
	}
	files, err := filepath.Glob(filepath.Join(testdata, "config", "valid", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(tests) {
		t.Errorf("%d files in testdata/config/valid, %d test cases: each file needs its checks", len(files), len(tests))
	}
	for _, path := range files {
		name := filepath.Base(path)
		t.Run(name, func(t *testing.T) {
			c, err := Load(path)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			check(t, "File", c.File, path)
			verify, ok := tests[name]
			if !ok {
				t.Fatalf("no checks for %s", name)
			}
			verify(t, c)
		})
	}
}

func check(t *testing.T, what string, got, want any) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s = %+v, want %+v", what, got, want)
	}
}

func onlyPool(t *testing.T, c *Config, name string) *Pool {
	t.Helper()
	if len(c.Pools) != 1 || c.Pools[0].Name != name {
		t.Fatalf("pools = %v, want only %q", poolNames(c), name)
	}
	return c.Pools[0]
}

func poolNames(c *Config) []string {
	var names []string
	for _, p := range c.Pools {
		names = append(names, p.Name)
	}
	return names
}

// backendSummary renders each backend as "name url weight".
func backendSummary(p *Pool) []string {
	var out []string
	for _, b := range p.Backends {
		out = append(out, b.Name+" "+b.URL.String()+" "+strconv.Itoa(b.Weight))
	}
	return out
}

func backendStates(p *Pool) []State {
	var out []State
	for _, b := range p.Backends {
		out = append(out, b.State)
	}
	return out
}

// TestLoadInvalid compares every problem reported for each file of
// testdata/config/invalid with its golden .err file; -update rewrites them.
func TestLoadInvalid(t *testing.T) {
	t.Chdir(testdata)
	files, err := filepath.Glob(filepath.Join("config", "invalid", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no test files")
	}
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			c, err := Load(path)
			if c != nil {
				t.Errorf("Load returned a config along with %v", err)
			}
			var list ErrorList
			if !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("Load error = %v (%T), want a non-empty ErrorList", err, err)
			}
			got := []byte(err.Error() + "\n")
			golden := strings.TrimSuffix(path, ".yaml") + ".err"
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("errors differ from %s\ngot:\n%s\nwant:\n%s", golden, got, want)
			}
		})
	}
	// A golden file without its config would silently test nothing.
	goldens, _ := filepath.Glob(filepath.Join("config", "invalid", "*.err"))
	for _, g := range goldens {
		if _, err := os.Stat(strings.TrimSuffix(g, ".err") + ".yaml"); err != nil {
			t.Errorf("%s has no config beside it", g)
		}
	}
}

func TestLoadIOError(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		path string
		is   error
	}{
		{"missing file", filepath.Join(dir, "missing.yaml"), fs.ErrNotExist},
		{"directory", dir, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(tt.path)
			if c != nil || err == nil {
				t.Fatalf("Load = %v, %v; want an error", c, err)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("Load error %v is not %v", err, tt.is)
			}
			if !strings.HasPrefix(err.Error(), "read config: ") {
				t.Errorf("Load error %q does not say it could not read the config", err)
			}
		})
	}
}

func TestParseLargeInput(t *testing.T) {
	valid := "listen: 127.0.0.1:8080\npools:\n  web:\n    backends: [{url: \"http://127.0.0.1:9001\"}]\n"
	pad := func(size int, line string) []byte {
		b := []byte(valid)
		for len(b)+len(line) <= size {
			b = append(b, line...)
		}
		return b
	}
	tests := []struct {
		name  string
		data  []byte
		valid bool
	}{
		{"10 MiB of garbage", bytes.Repeat([]byte("x"), 10<<20), false},
		{"10 MiB of comments", pad(10<<20, "# padding\n"), false},
		{"just under the limit, comments", pad(MaxFileSize, "# padding\n"), true},
		{"just under the limit, deep nesting", append([]byte("listen: "), bytes.Repeat([]byte("["), MaxFileSize-8)...), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("big.yaml", tt.data)
			if tt.valid {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				return
			}
			var list ErrorList
			if c != nil || !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("Parse = %v, %v; want a non-empty ErrorList", c, err)
			}
		})
	}
	t.Run("Load rejects a file over the limit", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "big.yaml")
		if err := os.WriteFile(path, pad(10<<20, "# padding\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Load(path)
		want := path + ": file is larger than the 4 MiB limit"
		if err == nil || err.Error() != want {
			t.Errorf("Load error = %v, want %q", err, want)
		}
	})
}

// BenchmarkParse measures a realistic config and the worst case found for
// the size limit: a file of nothing but small unknown keys, where the parser
// builds a node per word and every key is an error.
func BenchmarkParse(b *testing.B) {
	full, err := os.ReadFile(filepath.Join(testdata, "config", "valid", "full.yaml"))
	if err != nil {
		b.Fatal(err)
	}
	var keys []byte
	for i := 0; len(keys) < MaxFileSize-20; i++ {
		keys = strconv.AppendInt(append(keys, 'k'), int64(i), 10)
		keys = append(keys, ": 1\n"...)
	}
	for _, bm := range []struct {
		name string
		data []byte
	}{{"full.yaml", full}, {"4MiB of unknown keys", keys}} {
		b.Run(bm.name, func(b *testing.B) {
			b.SetBytes(int64(len(bm.data)))
			for b.Loop() {
				if _, err := Parse("bench.yaml", bm.data); (err == nil) != (bm.name == "full.yaml") {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestBalancerFactoryError checks that a factory's refusal is reported at the
// pool's balancer key, or at the pool when it has no balancer section.
func TestBalancerFactoryError(t *testing.T) {
	refuse := func(name string, o balancer.Options) (balancer.Policy, error) {
		return nil, errors.New("refused " + name)
	}
	data := []byte(`listen: :8080
routes: [{pool: a}]
pools:
  a:
    backends: [{url: "http://a"}]
    balancer:
      type: cookie
  b:
    backends: [{url: "http://b"}]
`)
	_, err := parse("f.yaml", data, refuse)
	want := "f.yaml:6:5: pools.a.balancer: refused cookie\n" +
		"f.yaml:8:3: pools.b.balancer: refused round-robin"
	if err == nil || err.Error() != want {
		t.Errorf("parse error:\n%v\nwant:\n%s", err, want)
	}
}

// TestHash checks that a loaded config names the exact bytes it came from,
// so that logs and metrics tell which version of the file is served.
func TestHash(t *testing.T) {
	data := []byte("listen: 127.0.0.1:8080\npools:\n  web:\n    backends: [{url: \"http://127.0.0.1:9001\"}]\n")
	path := filepath.Join(t.TempDir(), "a.yaml")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	check(t, "Load hash", c.Hash, hex.EncodeToString(sum[:]))
	same, err := Parse("other-name.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	check(t, "same bytes under another name", same.Hash, c.Hash)
	edited, err := Parse(path, append(data, "# a comment\n"...))
	if err != nil {
		t.Fatal(err)
	}
	if edited.Hash == c.Hash {
		t.Error("a file with another comment has the same hash")
	}
}

// TestEmptyDocuments: empty documents before or after the config are
// ignored, as tools that join YAML files leave them; a file of nothing but
// empty documents is empty, and a second document with anything in it is
// refused at its position.
func TestEmptyDocuments(t *testing.T) {
	const valid = "listen: 127.0.0.1:8080\npools:\n  web:\n    backends: [{url: \"http://127.0.0.1:9001\"}]\n"
	tests := []struct {
		name, data string
		want       string // the error without the file name; "": none
	}{
		{"one before", "---\n" + valid, ""},
		{"two before", "---\n---\n" + valid, ""},
		{"before and after", "---\n---\n" + valid + "---\n---\n", ""},
		{"nothing but empty documents", "---\n---\n", "1:1: file is empty; a config needs at least listen and pools"},
		{"a null before", "--- ~\n---\n" + valid, "1:1: file is empty; a config needs at least listen and pools"},
		{"a second one after empty ones", "---\n" + valid + "---\n---\nlisten: x\n", "7:1: a config is one YAML document; found a second one"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("a.yaml", []byte(tt.data))
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Parse: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), "a.yaml:"+tt.want)):
				t.Fatalf("Parse = %v, want %s", err, tt.want)
			}
		})
	}
}
