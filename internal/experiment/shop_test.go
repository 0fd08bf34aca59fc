package experiment

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/affinityproxy/affinity/internal/harness"
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

func TestRequestBytesCountsTheCookie(t *testing.T) {
	g := testGenerator(t, testLoad(), "http://127.0.0.1:8080", nil)
	u := g.users[0]
	req, err := g.request(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	bare := requestBytes(req, harness.CookieHeader(u.client.Jar, req.URL))
	// "POST /login HTTP/1.1\r\n" + "Host: 127.0.0.1:8080\r\n" + UA + X-User + Content-Length + "\r\n"
	want := 22 + 22 + len("User-Agent: affinity-experiment\r\n") + len("X-User: u0001\r\n") + len("Content-Length: 0\r\n") + 2
	if bare != want {
		t.Errorf("requestBytes = %d, want %d", bare, want)
	}
	u.client.Jar.SetCookies(g.base, []*http.Cookie{{Name: "SHOP_TOKEN", Value: strings.Repeat("t", 500)}})
	req, _ = g.request(context.Background(), u)
	if got := requestBytes(req, harness.CookieHeader(u.client.Jar, req.URL)) - bare; got != len("Cookie: SHOP_TOKEN=\r\n")+500 {
		t.Errorf("a 500-byte cookie added %d bytes", got)
	}
}
