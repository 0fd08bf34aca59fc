package harness

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/affinityproxy/affinity/internal/testutil"
)

func TestProbeNamesTheBackendAndGivesEachANewUser(t *testing.T) {
	var users []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		users = append(users, r.Header.Get(headerUser))
		w.Header().Set(HeaderBackend, "b1")
	}))
	defer srv.Close()
	c := &Cluster{proxyAddr: strings.TrimPrefix(srv.URL, "http://"), client: srv.Client()}
	if got := c.Probe(t.Context()); got != "b1" {
		t.Errorf("Probe = %q, want b1", got)
	}
	c.Probe(t.Context())
	if len(users) != 2 || users[0] == users[1] || users[0] == "" {
		t.Errorf("probes came as users %q, want two distinct ones", users)
	}
	if !c.healthy(t.Context(), c.proxyAddr) {
		t.Error("healthy = false for a 200")
	}
}

func TestStartNeedsItsFields(t *testing.T) {
	c := &Cluster{Dir: t.TempDir()}
	if err := c.Start(t.Context(), 1); err == nil {
		t.Error("Start without Exe and Config succeeded")
	}
}

// TestSettleSeesTheProxyRouteByEachFault kills, restarts, hangs and
// resumes a backend of a real cluster; after each, Settle returns once the
// proxy's /status shows the change.
func TestSettleSeesTheProxyRouteByEachFault(t *testing.T) {
	c := startCluster(t, 2)
	ctx := t.Context()
	for _, f := range []Fault{
		{Action: Kill, Target: "b2"}, {Action: Restart, Target: "b2"},
		{Action: Hang, Target: "b1"}, {Action: Resume, Target: "b1"},
	} {
		if err := c.Apply(ctx, f); err != nil {
			t.Fatal(err)
		}
		if err := c.Settle(ctx, f); err != nil {
			t.Fatalf("Settle(%s): %v", f, err)
		}
		st, err := c.proxyStatus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := f.Action == Restart || f.Action == Resume
		if got := st.available(testPool, f.Target); got != want {
			t.Errorf("after %s settled: %s available = %v, want %v", f, f.Target, got, want)
		}
	}
	if b, _ := c.Backend("b2"); b.State != Running || b.proc == nil {
		t.Errorf("b2 after its restart: %+v", b)
	}
	// The restarted b2 appended to its log: two lives, one file.
	data, err := os.ReadFile(filepath.Join(c.Dir, "b2.log"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(data), "backend listening"); n != 2 {
		t.Errorf("b2.log holds %d starts, want 2", n)
	}
	if err := c.Apply(ctx, Fault{Action: StoreDown}); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("store fault on a cluster = %v, want ErrUnsupported", err)
	}
}

// TestWatchReloadsByFile has the proxy reload by its own watch of the
// config file, as when an editor saves it: no signal is sent, and the
// reload is still waited for.
func TestWatchReloadsByFile(t *testing.T) {
	c := &Cluster{Exe: testutil.AffinityBinary(t), Dir: t.TempDir(), Config: testConfig, Pool: testPool, Watch: true}
	t.Cleanup(func() { _ = c.Close() })
	if err := c.Start(t.Context(), 1); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := c.Apply(t.Context(), Fault{Action: Reload}); err != nil {
			t.Fatal(err)
		}
	}
	st, err := c.proxyStatus(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.Config.ReloadsOK != 2 {
		t.Errorf("the proxy reloaded %d times, want 2", st.Config.ReloadsOK)
	}
}
