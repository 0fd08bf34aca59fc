package chaos

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/harness"
)

// A client's first answer slower than its period must not let its next
// requests leave without a cookie: each would be placed anew, and the
// client would end up wherever its last answer pinned it, a move the proxy
// never made. The server answers requests without a cookie three periods
// late; the load places every client once, whatever that costs.
func TestLoadPlacesEachClientOnce(t *testing.T) {
	sc := Scenario{Clients: 2, Rate: 100, Duration: 300 * time.Millisecond, ClientTimeout: 5 * time.Second}
	slow := 3 * time.Duration(sc.Clients) * sc.period()
	var mu sync.Mutex
	placed := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := r.Cookie(stickyCookie); err != nil {
			mu.Lock()
			placed++
			n := placed
			mu.Unlock()
			time.Sleep(slow)
			http.SetCookie(w, &http.Cookie{Name: stickyCookie, Value: strconv.Itoa(n)})
		}
		w.Header().Set(harness.HeaderBackend, "b1")
	}))
	defer srv.Close()
	tr := harness.NewTransport(16)
	defer tr.CloseIdleConnections()

	l := newLoad(srv.URL, sc, tr)
	if err := l.pin(t.Context()); err != nil {
		t.Fatalf("pin: %v", err)
	}
	recs := l.run(t.Context(), time.Now())
	if len(recs) != int(sc.requests()) {
		t.Errorf("%d requests sent, want %d", len(recs), sc.requests())
	}
	for _, r := range recs {
		if r.fail != "" {
			t.Errorf("client %d: request at %v failed: %s", r.client, r.start, r.fail)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if placed != sc.Clients {
		t.Errorf("%d requests came without a cookie, want %d: one per client", placed, sc.Clients)
	}
}
