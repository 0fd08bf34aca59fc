package experiment

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"
)

func TestErrorKind(t *testing.T) {
	tests := []struct {
		status int
		body   string
		want   string
	}{
		{409, `{"error":"session_lost"}`, kindSessionLost},
		{409, `{"error":"session_stale","detail":"x"}`, kindSessionStale},
		{503, `{"error":"store_unavailable"}`, "store_unavailable"},
		{502, ``, "http_502"},
		{503, `no backend`, "http_503"},
		{500, `{"error":""}`, "http_500"},
	}
	for _, tt := range tests {
		if got := errorKind(tt.status, []byte(tt.body)); got != tt.want {
			t.Errorf("errorKind(%d, %s) = %q, want %q", tt.status, tt.body, got, tt.want)
		}
	}
}

func TestTransportKind(t *testing.T) {
	srv, client := startShop(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	_, err := client.Do(req)
	if got := transportKind(err); got != kindTimeout {
		t.Errorf("deadline: %q, want %q", got, kindTimeout)
	}
	req, _ = http.NewRequest(http.MethodGet, "http://127.0.0.1:1/", nil)
	_, err = client.Do(req)
	if got := transportKind(err); got != kindConnection {
		t.Errorf("refused: %q, want %q", got, kindConnection)
	}
}

func TestRequestBytesCountsTheCookie(t *testing.T) {
	g := newGenerator(testLoad(), "http://127.0.0.1:8080", nil)
	u := g.users[0]
	req, err := g.request(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	bare := requestBytes(req)
	// "POST /login HTTP/1.1\r\n" + "Host: 127.0.0.1:8080\r\n" + UA + X-User + Content-Length + "\r\n"
	want := 22 + 22 + len("User-Agent: affinity-experiment\r\n") + len("X-User: u0001\r\n") + len("Content-Length: 0\r\n") + 2
	if bare != want {
		t.Errorf("requestBytes = %d, want %d", bare, want)
	}
	u.cookies["SHOP_TOKEN"] = string(make([]byte, 500))
	req, _ = g.request(context.Background(), u)
	if got := requestBytes(req) - bare; got != len("Cookie: SHOP_TOKEN=\r\n")+500 {
		t.Errorf("a 500-byte cookie added %d bytes", got)
	}
}

func TestDealerGivesEveryUserOneArrivalPerRound(t *testing.T) {
	deal := func(seed uint64) []int {
		d := dealer{seed: seed, n: 5}
		out := make([]int, 20)
		for k := range out {
			out[k] = d.user(k)
		}
		return out
	}
	a := deal(1)
	for r := range 4 {
		seen := map[int]bool{}
		for _, u := range a[r*5 : r*5+5] {
			seen[u] = true
		}
		if len(seen) != 5 {
			t.Errorf("round %d dealt %v: want each of 5 users once", r, a[r*5:r*5+5])
		}
	}
	if fmt.Sprint(a[:5]) == fmt.Sprint(a[5:10]) && fmt.Sprint(a[5:10]) == fmt.Sprint(a[10:15]) {
		t.Errorf("rounds are not reshuffled: %v", a)
	}
	if fmt.Sprint(a) != fmt.Sprint(deal(1)) {
		t.Error("the same seed dealt differently")
	}
}
