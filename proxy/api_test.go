package proxy

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// TestStateWriteDuringReload: a state write answered 200 is in effect,
// however reloads overlap it: each write lands either before a reload,
// which carries it over, or on the configuration that reload put in
// service, never on one being replaced.
func TestStateWriteDuringReload(t *testing.T) {
	bs := startBackends(t, "b0", "b1")
	var cfgs [2]*config.Config
	for i := range cfgs {
		p := poolOf("web", "cookie", cookieOptions(), bs...)
		p.Retries = config.Retries{Count: i} // a real change, and none of any state
		cfgs[i] = catchAll(p)
	}
	s, _, admin := startWithAdmin(t, cfgs[0], nil)

	stop, reloaded := make(chan struct{}), make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				reloaded <- n
				return
			default:
			}
			n++
			if err := s.Reload(cfgs[n%2]); err != nil {
				t.Error(err)
			}
		}
	}()
	const writes = 400
	states := []config.State{config.StateDrain, config.StateMaint}
	lost, sent := 0, 0
	for deadline := time.Now().Add(waitFor); sent < writes && time.Now().Before(deadline); sent++ {
		want := states[sent%2]
		mustSetState(t, admin, "web", "b1", want)
		// Once the reload that may be under way is done.
		s.reloadMu.Lock()
		got := s.state.Load().pools[0].view()[1].state
		s.reloadMu.Unlock()
		if got != want {
			lost++
		}
	}
	close(stop)
	n := <-reloaded
	if n == 0 {
		t.Fatal("no reload ran during the writes")
	}
	if lost > 0 {
		t.Errorf("%d of %d writes answered 200 were lost to %d reloads", lost, sent, n)
	}
}

// FuzzDecodeState: a state write's body is accepted only as one JSON
// object holding "state" alone, once, with a state for its value, and
// nothing makes the decoder panic.
func FuzzDecodeState(f *testing.F) {
	for _, seed := range []string{
		`{"state": "drain"}`, ` {"state":"ready"} `, `{"STATE":"maint"}`, `{"state":"ready","state":"maint"}`,
		`{"state":"drain"}{}`, `{"st\u0061te":"drain"}`, `{"state":null}`, `[]`, `"drain"`, `{`, ``,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		st, err := decodeState(bytes.NewReader(body))
		if err != nil {
			return
		}
		if _, perr := config.ParseState(string(st)); perr != nil {
			t.Fatalf("%q: accepted state %q", body, st)
		}
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(body, &fields); err != nil {
			t.Fatalf("%q accepted, but it is not one JSON object: %v", body, err)
		}
		var got string
		if len(fields) != 1 || json.Unmarshal(fields["state"], &got) != nil || got != string(st) {
			t.Fatalf("%q accepted as %q, but it holds %v", body, st, fields)
		}
		if n := bytes.Count(body, []byte(`"`)); n > 4 && !bytes.Contains(body, []byte(`\`)) {
			t.Fatalf("%q accepted, with more strings than a key and its value", body)
		}
	})
}

// TestAdminHostCheck: a loopback admin listener answers only requests that
// name it by an address, localhost or admin.listen's host, so that a web
// page rebinding its own name to 127.0.0.1 can neither write nor read; one
// reachable from other hosts checks no Host.
func TestAdminHostCheck(t *testing.T) {
	const token = "0123456789abcdef-host"
	tests := []struct {
		name    string
		exposed bool
		token   string
		host    string // "" for the listener's own address
		allowed bool
	}{
		{"address", false, "", "", true},
		{"localhost", false, "", "localhost:9090", true},
		{"localhost, capitals and a final dot", false, "", "LocalHost.:9090", true},
		{"a name under .localhost", false, "", "admin.localhost:9090", true},
		{"IPv6 loopback", false, "", "[::1]:9090", true},
		{"another address", false, "", "10.1.2.3", true},
		{"admin.listen's host", false, "", "Admin.Example.:9090", true},
		{"another name", false, "", "evil.example:9090", false},
		{"a name ending in localhost", false, "", "evillocalhost:9090", false},
		{"a name under an address", false, "", "127.0.0.1.evil.example", false},
		{"another name, with a token", false, token, "evil.example", false},
		{"exposed, another name", true, token, "evil.example", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, admin, logs := startAdminOf(t, config.Admin{Listen: "admin.example:9090", Token: tt.token}, tt.exposed)

			send := func(method, path, body string) (int, string) {
				t.Helper()
				req, err := http.NewRequest(method, admin+path, strings.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				if tt.host != "" {
					req.Host = tt.host
				}
				if tt.token != "" {
					req.Header.Set("Authorization", "Bearer "+tt.token)
				}
				resp, err := testutil.Client(t).Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				return resp.StatusCode, string(b)
			}
			for _, path := range []string{"/api/v1/pools", "/status", "/metrics", "/"} {
				code, body := send(http.MethodGet, path, "")
				if tt.allowed != (code == http.StatusOK) || (!tt.allowed && (code != http.StatusForbidden || !strings.Contains(body, "is not this admin listener's"))) {
					t.Errorf("GET %s with Host %q: %d %.80q; allowed %v", path, tt.host, code, body, tt.allowed)
				}
			}
			code, body := send(http.MethodPut, "/api/v1/pools/web/backends/b0/state", `{"state": "maint"}`)
			want := config.StateReady
			if tt.allowed {
				want = config.StateMaint
			}
			if got := s.state.Load().pools[0].view()[0].state; got != want || tt.allowed != (code == http.StatusOK) {
				t.Errorf("PUT with Host %q: %d %q, b0 %s; want it %s", tt.host, code, body, got, want)
			}
			if !tt.allowed {
				var e struct{ Error string }
				if json.Unmarshal([]byte(body), &e) != nil || !strings.Contains(e.Error, tt.host) {
					t.Errorf("refusal %q, want a JSON error naming the Host", body)
				}
				if n := len(entries(logs, "admin API write refused")); n != 1 {
					t.Errorf("%d refusals logged, want the write's", n)
				}
			}
		})
	}
}

// FuzzHostAllowed: a loopback admin listener allows a Host only when it
// names an IP address, localhost, a name under .localhost or admin.listen's
// host, whatever its port, case or final dot.
func FuzzHostAllowed(f *testing.F) {
	for _, seed := range []string{"localhost:9090", "[::1]:9090", "Evil.Example.", "127.0.0.1", "[fe80::1%25eth0]:80",
		"a:b:c", "", "x.localhost", "admin.example:1", "admin.example.evil", "]:"} {
		f.Add(seed)
	}
	a := &admin{host: "admin.example"}
	f.Fuzz(func(t *testing.T, host string) {
		if !a.hostAllowed(host) || host == "" {
			return
		}
		u := url.URL{Host: host}
		name := strings.ToLower(strings.TrimSuffix(u.Hostname(), "."))
		if _, err := netip.ParseAddr(name); err != nil && name != "localhost" && !strings.HasSuffix(name, ".localhost") &&
			name != "admin.example" {
			t.Fatalf("Host %q (%q) allowed", host, name)
		}
	})
}
