package demoapp

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"regexp"
	"strconv"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// reply is what one response of the demo app tells a client.
type reply struct {
	status  int
	backend string // X-Backend header
	body    string
	name    string // parsed from the body
	session string // parsed from the body
	count   int    // parsed from the body
	header  int    // X-Session-Count header
}

var bodyRE = regexp.MustCompile(`^name=(\S+) session=(\S+) count=(\d+)\n$`)

// get sends GET path with client c and parses the reply; a body that is not
// the documented counter line leaves name, session and count empty.
func get(t *testing.T, c *http.Client, url string) reply {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body of %s: %v", url, err)
	}
	rp := reply{status: resp.StatusCode, backend: resp.Header.Get(HeaderBackend), body: string(b)}
	if h := resp.Header.Get(HeaderSessionCount); h != "" {
		if rp.header, err = strconv.Atoi(h); err != nil {
			t.Fatalf("%s: %q", HeaderSessionCount, h)
		}
	}
	if m := bodyRE.FindStringSubmatch(rp.body); m != nil {
		rp.name, rp.session = m[1], m[2]
		rp.count, _ = strconv.Atoi(m[3])
	}
	return rp
}

// start serves h on a real loopback listener for the duration of the test.
func start(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// newClient returns a client with its own cookie jar, like a browser.
func newClient(t *testing.T) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Jar: jar, Transport: &http.Transport{}}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func TestNameInBodyAndHeader(t *testing.T) {
	srv := start(t, New("web-1"))
	for _, path := range []string{"/", "/products/items?id=3", "/a/b/c"} {
		t.Run(path, func(t *testing.T) {
			r := get(t, newClient(t), srv.URL+path)
			if r.status != http.StatusOK {
				t.Errorf("status %d, want 200", r.status)
			}
			if r.backend != "web-1" {
				t.Errorf("%s = %q, want web-1", HeaderBackend, r.backend)
			}
			if r.name != "web-1" || r.count != 1 || r.header != 1 {
				t.Errorf("body %q, %s %d: want name=web-1 count=1", r.body, HeaderSessionCount, r.header)
			}
		})
	}
}

func TestCounterIncrementsInSession(t *testing.T) {
	srv := start(t, New("web-2"))
	c := newClient(t)
	first := get(t, c, srv.URL+"/")
	for want := 1; want <= 5; want++ {
		r := first
		if want > 1 {
			r = get(t, c, srv.URL+"/page/"+strconv.Itoa(want))
		}
		if r.count != want || r.header != want {
			t.Fatalf("request %d: body %q, header %d: want count %d", want, r.body, r.header, want)
		}
		if r.session != first.session {
			t.Fatalf("request %d: session %q, want %q kept", want, r.session, first.session)
		}
	}
}

func TestNewClientGetsNewSession(t *testing.T) {
	srv := start(t, New("web-1"))
	a, b := newClient(t), newClient(t)
	get(t, a, srv.URL+"/")
	ra := get(t, a, srv.URL+"/")
	rb := get(t, b, srv.URL+"/")
	if ra.count != 2 {
		t.Errorf("client a: count %d, want 2", ra.count)
	}
	if rb.count != 1 {
		t.Errorf("client b: count %d, want 1", rb.count)
	}
	if ra.session == "" || ra.session == rb.session {
		t.Errorf("sessions %q and %q, want two different ids", ra.session, rb.session)
	}
}

// A cookie this backend never issued (the client was moved here, or the
// backend restarted) starts a new session with a fresh id, never the
// client's value.
func TestUnknownSessionStartsOver(t *testing.T) {
	srv := start(t, New("web-3"))
	c := &http.Client{Transport: &http.Transport{}} // no jar: the test sets the cookie
	t.Cleanup(c.CloseIdleConnections)
	for _, value := range []string{"made-up", "", "x y"} {
		req, err := http.NewRequest(http.MethodGet, srv.URL+"/", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Cookie", CookieName+"="+value)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		m := bodyRE.FindStringSubmatch(string(b))
		if m == nil || m[2] == value || m[3] != "1" {
			t.Errorf("cookie %q: body %q, want a new session with count 1", value, b)
			continue
		}
		var set bool
		for _, ck := range resp.Cookies() {
			set = set || (ck.Name == CookieName && ck.Value == m[2])
		}
		if !set {
			t.Errorf("cookie %q: no Set-Cookie for the new session", value)
		}
	}
}

func TestSessionsAreBounded(t *testing.T) {
	srv := start(t, NewWithOptions("web-1", Options{MaxSessions: 2}))
	oldest, mid, newest := newClient(t), newClient(t), newClient(t)
	for _, c := range []*http.Client{oldest, mid, newest} {
		get(t, c, srv.URL+"/")
	}
	// The third session evicted the least recently used one.
	if r := get(t, oldest, srv.URL+"/"); r.count != 1 {
		t.Errorf("oldest client: count %d, want 1 (session evicted)", r.count)
	}
	if r := get(t, newest, srv.URL+"/"); r.count != 2 {
		t.Errorf("newest client: count %d, want 2 (session kept)", r.count)
	}
}

func TestHealthz(t *testing.T) {
	srv := start(t, New("web-1"))
	c := newClient(t)
	for range 3 {
		resp, err := c.Get(srv.URL + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(b) != "ok\n" {
			t.Errorf("healthz: %d %q, want 200 \"ok\\n\"", resp.StatusCode, b)
		}
		if len(resp.Cookies()) != 0 {
			t.Errorf("healthz set cookies %v, want none", resp.Cookies())
		}
	}
	// Health checks are not counted as visits.
	if r := get(t, c, srv.URL+"/"); r.count != 1 {
		t.Errorf("after health checks: count %d, want 1", r.count)
	}
}

func TestFaviconNotCounted(t *testing.T) {
	srv := start(t, New("web-1"))
	c := newClient(t)
	get(t, c, srv.URL+"/")
	if r := get(t, c, srv.URL+"/favicon.ico"); r.status != http.StatusNoContent || r.backend != "web-1" {
		t.Errorf("favicon: status %d backend %q, want 204 from web-1", r.status, r.backend)
	}
	if r := get(t, c, srv.URL+"/"); r.count != 2 {
		t.Errorf("count %d after a favicon fetch, want 2", r.count)
	}
}

func BenchmarkServeHTTP(b *testing.B) {
	h := New("web-1")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	cookie := rec.Result().Cookies()[0]
	b.Run("known-session", func(b *testing.B) {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.AddCookie(cookie)
		b.ReportAllocs()
		for b.Loop() {
			h.ServeHTTP(httptest.NewRecorder(), req)
		}
	})
	b.Run("new-session", func(b *testing.B) {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		b.ReportAllocs()
		for b.Loop() {
			h.ServeHTTP(httptest.NewRecorder(), req)
		}
	})
}

func TestDownAndUp(t *testing.T) {
	srv := start(t, New("web-1"))
	c := newClient(t)
	steps := []struct {
		method, path string
		status       int
		body         string
	}{
		{http.MethodGet, "/healthz", http.StatusOK, "ok\n"},
		{http.MethodPost, "/_down", http.StatusOK, "down\n"},
		{http.MethodGet, "/healthz", http.StatusServiceUnavailable, "down\n"},
		// Only the health check fails: the app keeps serving.
		{http.MethodGet, "/", http.StatusOK, ""},
		{http.MethodGet, "/_down", http.StatusOK, "down\n"},
		{http.MethodGet, "/healthz", http.StatusServiceUnavailable, "down\n"},
		{http.MethodGet, "/_up", http.StatusOK, "up\n"},
		{http.MethodGet, "/healthz", http.StatusOK, "ok\n"},
		{http.MethodPost, "/_down", http.StatusOK, "down\n"},
		{http.MethodPost, "/_up", http.StatusOK, "up\n"},
		{http.MethodGet, "/healthz", http.StatusOK, "ok\n"},
	}
	for i, st := range steps {
		req, err := http.NewRequest(st.method, srv.URL+st.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != st.status || (st.body != "" && string(b) != st.body) {
			t.Errorf("step %d, %s %s: %d %q, want %d %q", i, st.method, st.path, resp.StatusCode, b, st.status, st.body)
		}
		if got := resp.Header.Get(HeaderBackend); got != "web-1" {
			t.Errorf("step %d: %s %q, want web-1", i, HeaderBackend, got)
		}
	}
}

// Logging out forgets the counter session and expires the app's cookies,
// with an empty value as applications usually do.
func TestLogout(t *testing.T) {
	srv := start(t, New("web-1"))
	c := newClient(t)
	first := get(t, c, srv.URL+"/")
	get(t, c, srv.URL+"/")
	req, err := http.NewRequest(http.MethodPost, srv.URL+"/logout", nil)
	if err != nil {
		t.Fatal(err)
	}
	// Sent by hand, so that the old cookie can be sent again after.
	req.AddCookie(&http.Cookie{Name: CookieName, Value: first.session})
	resp, err := (&http.Client{Transport: c.Transport}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get(HeaderBackend) != "web-1" {
		t.Fatalf("POST /logout: %d from %q, want 204 from web-1", resp.StatusCode, resp.Header.Get(HeaderBackend))
	}
	expired := map[string]bool{}
	for _, ck := range resp.Cookies() {
		if ck.Value == "" && ck.MaxAge < 0 && ck.Path == "/" {
			expired[ck.Name] = true
		}
	}
	if !expired[CookieName] || !expired[SessionCookie] || len(resp.Cookies()) != 2 {
		t.Errorf("Set-Cookie %q, want %s and %s expired with empty values", resp.Header["Set-Cookie"], CookieName, SessionCookie)
	}
	again := &http.Client{Transport: c.Transport}
	req, _ = http.NewRequest(http.MethodGet, srv.URL+"/", nil)
	req.AddCookie(&http.Cookie{Name: CookieName, Value: first.session})
	resp, err = again.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if n := resp.Header.Get(HeaderSessionCount); n != "1" {
		t.Errorf("the old session after logout counts %s, want a new session at 1", n)
	}
	if r := get(t, c, srv.URL+"/logout"); r.status != http.StatusMethodNotAllowed {
		t.Errorf("GET /logout: %d, want 405", r.status)
	}
}
