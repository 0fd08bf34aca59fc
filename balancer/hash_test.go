package balancer

import (
	"errors"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"testing"
)

// keyRequest returns a request whose X-User header is key.
func keyRequest(key string) *http.Request {
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("X-User", key)
	return r
}

// assign maps keys "user-0" … to the IDs of the backends p picks for them.
func assign(t testing.TB, p Picker, keys int) []string {
	t.Helper()
	ids := make([]string, keys)
	for i := range ids {
		pk := mustPick(t, p, keyRequest("user-"+strconv.Itoa(i)))
		if pk.Sticky != StickyKept || pk.SetCookie != "" {
			t.Fatalf("pick with a key: %+v, want kept without cookie", pk)
		}
		ids[i] = pk.Backend.ID
	}
	return ids
}

func buildHash(t testing.TB, o Options, s Set) Picker {
	t.Helper()
	return mustPolicy(t, "consistent-hash", o).Build(s)
}

// Every replica and restart must send a key to the same backend, whatever
// the order of the config.
func TestHashSameKeySameBackend(t *testing.T) {
	bs := testBackends(nil, 1, 2, 1, 3, 1)
	shuffled := []*Backend{bs[3], bs[0], bs[4], bs[2], bs[1]}
	a := assign(t, buildHash(t, hashOpts("header:x-user"), allAvailable(bs)), 2000)
	b := assign(t, buildHash(t, hashOpts("header:X-User"), allAvailable(shuffled)), 2000)
	if !slices.Equal(a, b) {
		t.Error("two pickers over the same backends in another order disagree")
	}
	for _, id := range []string{"b0", "b1", "b2", "b3", "b4"} {
		if countOf(a, id) == 0 {
			t.Errorf("%s got no key out of 2000", id)
		}
	}
}

func TestHashRemap(t *testing.T) {
	const keys = 10000
	bs := testBackends(nil, 1, 1, 1, 1, 1)
	pol := mustPolicy(t, "consistent-hash", hashOpts("header:X-User"))
	before := assign(t, pol.Build(allAvailable(bs)), keys)
	without := slices.Delete(slices.Clone(bs), 2, 3)
	during := assign(t, pol.Build(Set{All: bs, Available: without}), keys)
	moved := 0
	for i := range before {
		switch {
		case before[i] == "b2":
			moved++
			if during[i] == "b2" {
				t.Fatalf("key %d still on removed b2", i)
			}
		case during[i] != before[i]:
			t.Fatalf("key %d moved %s → %s though its backend stayed", i, before[i], during[i])
		}
	}
	if f := float64(moved) / keys; f < 0.15 || f > 0.25 {
		t.Errorf("removing 1 of 5 moved %.3f of keys, want about 0.2", f)
	}
	after := assign(t, pol.Build(allAvailable(bs)), keys)
	if !slices.Equal(after, before) {
		t.Error("adding b2 back did not return every key to where it was")
	}
}

func TestHashWeights(t *testing.T) {
	const keys = 20000
	tests := []struct {
		weights []int
	}{
		{[]int{1, 3}},
		{[]int{1, 1, 2}},
		{[]int{5, 1, 1, 1}},
	}
	for _, tt := range tests {
		t.Run(idsName(tt.weights), func(t *testing.T) {
			bs := testBackends(nil, tt.weights...)
			ids := assign(t, buildHash(t, hashOpts("header:X-User"), allAvailable(bs)), keys)
			total := 0
			for _, w := range tt.weights {
				total += w
			}
			for i, b := range bs {
				want := float64(tt.weights[i]) / float64(total)
				if got := float64(countOf(ids, b.ID)) / keys; math.Abs(got-want) > 0.05 {
					t.Errorf("%s (weight %d) got %.3f of keys, want %.3f", b.ID, tt.weights[i], got, want)
				}
			}
			// Only the ratio of weights matters.
			doubled := make([]int, len(tt.weights))
			for i, w := range tt.weights {
				doubled[i] = 2 * w
			}
			same := assign(t, buildHash(t, hashOpts("header:X-User"), allAvailable(testBackends(nil, doubled...))), keys)
			if !slices.Equal(ids, same) {
				t.Error("doubling every weight changed the ring")
			}
		})
	}
}

func TestHashKeys(t *testing.T) {
	req := func(f func(r *http.Request)) *http.Request {
		r := httptest.NewRequest("GET", "/", nil)
		f(r)
		return r
	}
	target := func(u string) *http.Request { return httptest.NewRequest("GET", u, nil) }
	tests := []struct {
		name string
		spec string
		r    *http.Request
		want string // "" means the key is missing
	}{
		{"ip v4", "ip", req(func(r *http.Request) { r.RemoteAddr = "10.1.2.3:5555" }), "10.1.2.3"},
		{"ip v6", "ip", req(func(r *http.Request) { r.RemoteAddr = "[2001:db8::1]:443" }), "2001:db8::1"},
		{"ip v6 loopback", "ip", req(func(r *http.Request) { r.RemoteAddr = "[::1]:80" }), "::1"},
		{"ip without port", "ip", req(func(r *http.Request) { r.RemoteAddr = "10.1.2.3" }), "10.1.2.3"},
		{"ip v6 without brackets", "ip", req(func(r *http.Request) { r.RemoteAddr = "::1" }), "::1"},
		{"ip unclosed bracket", "ip", req(func(r *http.Request) { r.RemoteAddr = "[::1:80" }), ""},
		{"ip empty", "ip", req(func(r *http.Request) { r.RemoteAddr = "" }), ""},
		{"path", "path", target("/users/42?x=1"), "/users/42"},
		{"path without URL", "path", req(func(r *http.Request) { r.URL = nil }), ""},
		{"header", "header:x-user", keyRequest("alice"), "alice"},
		{"header first value", "header:X-User", req(func(r *http.Request) { r.Header["X-User"] = []string{"a", "b"} }), "a"},
		{"header missing", "header:X-Other", keyRequest("alice"), ""},
		{"header empty", "header:X-User", keyRequest(""), ""},
		{"header host", "header:host", target("http://shop.example:8080/"), "shop.example:8080"},
		{"cookie", "cookie:sid", cookieRequest("a=1; sid=abc; b=2"), "abc"},
		{"cookie second line", "cookie:sid", cookieRequest("a=1", "sid=xyz"), "xyz"},
		{"cookie missing", "cookie:sid", cookieRequest("a=1"), ""},
		{"query", "query:user", target("/?a=1&user=bob&user=eve"), "bob"},
		{"query escaped value", "query:user", target("/?user=b%C3%B6b+smith"), "böb smith"},
		{"query escaped name", "query:user id", target("/?user%20id=7"), "7"},
		{"query plus in name", "query:user id", target("/?user+id=8"), "8"},
		{"query bad escape skipped", "query:user", target("/?user=%zz&user=ok"), "ok"},
		{"query no value", "query:user", target("/?user"), ""},
		{"query missing", "query:user", target("/?usr=1"), ""},
		{"query without URL", "query:user", req(func(r *http.Request) { r.URL = nil }), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, err := parseKey(tt.spec)
			if err != nil {
				t.Fatalf("parseKey(%q): %v", tt.spec, err)
			}
			if got := key(tt.r); got != tt.want {
				t.Errorf("key = %q, want %q", got, tt.want)
			}
			// The picker agrees: a present key pins, a missing one does not.
			p := buildHash(t, hashOpts(tt.spec), allAvailable(testBackends(nil, 1, 1, 1)))
			if pk := mustPick(t, p, tt.r); (pk.Sticky == StickyKept) != (tt.want != "") {
				t.Errorf("Sticky = %v with key %q", pk.Sticky, tt.want)
			}
		})
	}
}

func TestHashMissingKeyFallsBack(t *testing.T) {
	bs := testBackends(nil, 1, 2, 1)
	p := buildHash(t, hashOpts("header:X-User"), allAvailable(bs))
	got := map[string]int{}
	for range 400 {
		pk := mustPick(t, p, httptest.NewRequest("GET", "/", nil))
		if pk.Sticky != StickyNone || pk.SetCookie != "" {
			t.Fatalf("pick without key: %+v, want no affinity", pk)
		}
		got[pk.Backend.ID]++
	}
	if got["b0"] != 100 || got["b1"] != 200 || got["b2"] != 100 {
		t.Errorf("keyless picks %v, want the weighted rotation 100/200/100", got)
	}
}

func TestHashNoBackend(t *testing.T) {
	p := buildHash(t, hashOpts("header:X-User"), Set{All: testBackends(nil, 1, 1)})
	for _, r := range []*http.Request{keyRequest("k"), keyRequest("")} {
		if _, err := p.Pick(r); !errors.Is(err, ErrNoBackend) {
			t.Errorf("Pick with nothing available: %v, want ErrNoBackend", err)
		}
	}
}

// keyOn finds a key that the unbounded ring sends to backend id.
func keyOn(t *testing.T, p Picker, id string) string {
	t.Helper()
	for i := range 1000 {
		k := "user-" + strconv.Itoa(i)
		if mustPick(t, p, keyRequest(k)).Backend.ID == id {
			return k
		}
	}
	t.Fatalf("no key maps to %s", id)
	return ""
}

// hold puts n requests in flight on b, and returns what ends them.
func hold(b *Backend, n int) func() {
	for range n {
		b.Begin()
	}
	return func() {
		for range n {
			b.Done()
		}
	}
}

func TestHashBoundedSkipsHotBackend(t *testing.T) {
	g := &Group{}
	bs := testBackends(g, 1, 1, 1)
	hot := keyOn(t, buildHash(t, hashOpts("header:X-User"), allAvailable(bs)), "b0")
	defer hold(bs[0], 10)()
	bounded := hashOpts("header:X-User")
	bounded.Hash.LoadFactor = 1.25
	tests := []struct {
		name   string
		opts   Options
		set    Set
		wantB0 bool
	}{
		{"unbounded keeps the hot backend", hashOpts("header:X-User"), Set{All: bs, Available: bs, Group: g}, true},
		{"without a group loads are unknown", bounded, allAvailable(bs), true},
		// b0 has 10 in flight, its bound is ceil(1.25 × 11 / 3) = 5.
		{"bounded skips it", bounded, Set{All: bs, Available: bs, Group: g}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pk := mustPick(t, buildHash(t, tt.opts, tt.set), keyRequest(hot))
			if (pk.Backend.ID == "b0") != tt.wantB0 || pk.Sticky != StickyKept {
				t.Errorf("hot key went to %s (%v); want on b0: %v", pk.Backend.ID, pk.Sticky, tt.wantB0)
			}
		})
	}
}

// With every pick held in flight, no backend ever goes over
// ceil(LoadFactor × weight share × (pool in-flight + 1)).
func TestHashBoundedNeverExceeds(t *testing.T) {
	for _, weights := range [][]int{{1, 1, 1, 1}, {1, 2, 5}} {
		t.Run(idsName(weights), func(t *testing.T) {
			g := &Group{}
			bs := testBackends(g, weights...)
			o := hashOpts("header:X-User")
			o.Hash.LoadFactor = 1.25
			p := buildHash(t, o, Set{All: bs, Available: bs, Group: g})
			total := 0
			for _, w := range weights {
				total += w
			}
			var begun []*Backend
			defer func() {
				for _, b := range begun {
					b.Done()
				}
			}()
			// A few hot keys make most of the traffic, the skew that an
			// unbounded ring turns into a hotspot.
			for i := range 2000 {
				pk := mustPick(t, p, keyRequest("user-"+strconv.Itoa(i%7)))
				b := pk.Backend
				bound := math.Ceil(1.25 * float64(b.Weight) / float64(total) * float64(g.InFlight()+1))
				if float64(b.InFlight()+1) > bound {
					t.Fatalf("pick %d: %s would hold %d in flight, bound %.0f", i, b.ID, b.InFlight()+1, bound)
				}
				b.Begin()
				begun = append(begun, b)
			}
			for _, b := range bs {
				if b.InFlight() == 0 {
					t.Errorf("%s took none of the overflow", b.ID)
				}
			}
		})
	}
}

// A key whose backend failed is retried on the backend Pick gives the key
// once the failed one leaves the ring, and on that one only: every retry,
// every later request and every replica agree, and the key goes back when
// its backend returns.
func TestHashRepinAgreesWithPick(t *testing.T) {
	const keys = 2000
	bs := testBackends(nil, 1, 2, 1, 1, 3)
	pol := mustPolicy(t, "consistent-hash", hashOpts("header:X-User"))
	all := pol.Build(allAvailable(bs))
	pn, ok := all.(Pinner)
	if !ok {
		t.Fatalf("%T is not a Pinner", all)
	}
	home := assign(t, all, keys)
	for i, failed := range bs {
		without := slices.Delete(slices.Clone(bs), i, i+1)
		down := assign(t, pol.Build(Set{All: bs, Available: without}), keys)
		// A second failure during the same request: the retry skips both.
		j := (i + 1) % len(bs)
		both := slices.DeleteFunc(slices.Clone(without), func(b *Backend) bool { return b == bs[j] })
		downBoth := assign(t, pol.Build(Set{All: bs, Available: both}), keys)
		for k := range keys {
			r := keyRequest("user-" + strconv.Itoa(k))
			if home[k] != failed.ID {
				continue
			}
			b, setCookie, ok := pn.Repin(r, []*Backend{failed})
			if !ok || b.ID != down[k] || setCookie != "" {
				t.Fatalf("key %d of failed %s: Repin = %v %q %v, want %s as Pick gives without it", k, failed.ID, b, setCookie, ok, down[k])
			}
			if down[k] == bs[j].ID {
				if b, _, _ := pn.Repin(r, []*Backend{failed, bs[j]}); b.ID != downBoth[k] {
					t.Fatalf("key %d: second retry to %s, want %s", k, b.ID, downBoth[k])
				}
			}
		}
	}
	if back := assign(t, pol.Build(allAvailable(bs)), keys); !slices.Equal(back, home) {
		t.Error("keys did not return to their backends")
	}
	if b, _, ok := pn.Repin(keyRequest("user-1"), bs); ok || b != nil {
		t.Errorf("Repin with every backend tried = %v, %v; want none", b, ok)
	}
}

// A request without a key is retried on the rotation, never on a backend
// it tried, with bounded loads as without.
func TestHashRepinWithoutKey(t *testing.T) {
	g := &Group{}
	bs := testBackends(g, 1, 1, 1)
	bounded := hashOpts("header:X-User")
	bounded.Hash.LoadFactor = 1.25
	for _, o := range []Options{hashOpts("header:X-User"), bounded} {
		pn := buildHash(t, o, Set{All: bs, Available: bs, Group: g}).(Pinner)
		seen := map[*Backend]bool{}
		for range 6 {
			b, _, ok := pn.Repin(keyRequest(""), bs[:1])
			if !ok || b == bs[0] {
				t.Fatalf("Repin without a key = %v, %v; want b1 or b2", b, ok)
			}
			seen[b] = true
		}
		if len(seen) != 2 {
			t.Errorf("retries without a key reached %d backends, want 2", len(seen))
		}
		if b, _, ok := pn.Repin(keyRequest(""), bs); ok || b != nil {
			t.Errorf("Repin without a key, every backend tried = %v, %v; want none", b, ok)
		}
	}
	none := buildHash(t, hashOpts("header:X-User"), Set{All: bs}).(Pinner)
	if b, _, ok := none.Repin(keyRequest("k"), nil); ok || b != nil {
		t.Errorf("Repin with nothing available = %v, %v; want none", b, ok)
	}
}

// Under a load bound, a retry walks on from the key as Pick does, past the
// backends it tried and those that are full.
func TestHashRepinBounded(t *testing.T) {
	g := &Group{}
	bs := testBackends(g, 1, 1, 1)
	o := hashOpts("header:X-User")
	o.Hash.LoadFactor = 1.25
	p := buildHash(t, o, Set{All: bs, Available: bs, Group: g})
	k := keyOn(t, p, "b0")
	second, _, _ := p.(Pinner).Repin(keyRequest(k), bs[:1])
	third := bs[3-slices.Index(bs, second)]
	defer hold(second, 10)()
	if b, _, ok := p.(Pinner).Repin(keyRequest(k), bs[:1]); !ok || b != third {
		t.Errorf("Repin past a full successor = %v, %v; want %s", b, ok, third.ID)
	}
}

func FuzzHashPick(f *testing.F) {
	g := &Group{}
	bs := testBackends(g, 1, 2, 3)
	avail := bs[:2]
	var pickers []Picker
	for _, spec := range []string{"ip", "path", "header:X-User", "cookie:sid", "query:user"} {
		for _, lf := range []float64{0, 1.5} {
			o := hashOpts(spec)
			o.Hash.LoadFactor = lf
			pickers = append(pickers, buildHash(f, o, Set{All: bs, Available: avail, Group: g}))
		}
	}
	f.Add("10.0.0.1:80", "/a", "user=x&user=y", "alice", "sid=1")
	f.Add("[::1]:1", "/", "user=%zz", "", `sid="q"`)
	f.Add("[", "", "%=%&=&user", "\x00", ";sid;sid=")
	f.Fuzz(func(t *testing.T, remote, path, query, header, cookie string) {
		r := &http.Request{
			Method:     "GET",
			RemoteAddr: remote,
			URL:        &url.URL{Path: path, RawQuery: query},
			Header:     http.Header{"X-User": {header}, "Cookie": {cookie}},
		}
		for _, p := range pickers {
			pk, err := p.Pick(r)
			if err != nil || !slices.Contains(avail, pk.Backend) {
				t.Fatalf("Pick = %+v, %v: want an available backend", pk, err)
			}
			again, _ := p.Pick(r)
			if pk.Sticky == StickyKept && again.Backend != pk.Backend {
				t.Fatalf("same key picked %s then %s", pk.Backend.ID, again.Backend.ID)
			}
			b, _, ok := p.(Pinner).Repin(r, []*Backend{pk.Backend})
			if !ok || b == pk.Backend || !slices.Contains(avail, b) {
				t.Fatalf("Repin after %s = %v, %v: want the other available backend", pk.Backend.ID, b, ok)
			}
		}
	})
}

// The prefix table and the search within a slot must agree with the plain
// definition of the ring: a hash belongs to the owner of the first point at
// or past it, wrapping to the first point. Hashes at, just before and just
// after points probe the edges of slots.
func TestHashRingMatchesScan(t *testing.T) {
	for _, n := range []int{1, 3, 100, 1000} {
		weights := make([]int, n)
		for i := range weights {
			weights[i] = 1 + i%3
		}
		g := &Group{}
		bs := testBackends(g, weights...)
		bounded := hashOpts("header:X-User")
		bounded.Hash.LoadFactor = 1.25
		for _, o := range []Options{hashOpts("header:X-User"), bounded} {
			p := buildHash(t, o, Set{All: bs, Available: bs, Group: g}).(*hashPicker)
			want := func(h uint64) int {
				i := sort.Search(len(p.points), func(i int) bool { return p.points[i] >= h })
				return int(p.owners[i%len(p.points)])
			}
			rng := rand.New(rand.NewPCG(1, uint64(n)))
			probes := []uint64{0, math.MaxUint64}
			for range 2000 {
				probes = append(probes, rng.Uint64())
			}
			for i := 0; i < len(p.points); i += max(1, len(p.points)/500) {
				pos := p.points[i]
				probes = append(probes, pos, pos-1, pos+1)
			}
			seen := map[int]bool{}
			for _, h := range probes {
				got, w := p.owner(h, nil), want(h)
				if got != w {
					t.Fatalf("n=%d bounded=%v: hash %#x → backend %d, the ring says %d", n, p.group != nil, h, got, w)
				}
				seen[got] = true
			}
			if n <= 100 && len(seen) != n {
				t.Errorf("n=%d: the probes reached %d backends", n, len(seen))
			}
		}
	}
}
