package balancer

import (
	"errors"
	"maps"
	"slices"
	"strconv"
	"testing"
	"time"
)

// drainSet is a Set of bs where bs[i] drains and the others are available.
func drainSet(bs []*Backend, i int, g *Group) Set {
	avail := slices.Delete(slices.Clone(bs), i, i+1)
	return Set{All: bs, Available: avail, Draining: bs[i : i+1], Group: g}
}

// maintSet is a Set of bs where bs[i] takes nothing (maintenance, or down).
func maintSet(bs []*Backend, i int, g *Group) Set {
	return Set{All: bs, Available: slices.Delete(slices.Clone(bs), i, i+1), Group: g}
}

// Round-robin places every request anew: a draining backend gets none.
func TestDrainRoundRobin(t *testing.T) {
	bs := testBackends(nil, 1, 2, 1)
	p := mustPolicy(t, "round-robin", Options{}).Build(drainSet(bs, 1, nil))
	for range 300 {
		if pk := mustPick(t, p, cookieRequest()); pk.Backend == bs[1] {
			t.Fatal("round-robin picked the draining backend")
		}
	}
	only := mustPolicy(t, "round-robin", Options{}).Build(Set{All: bs, Draining: bs})
	if _, err := only.Pick(cookieRequest()); !errors.Is(err, ErrNoBackend) {
		t.Errorf("every backend draining: %v, want ErrNoBackend", err)
	}
}

// A draining backend keeps the clients whose cookie names it and gets no
// new one; neither does a client whose backend is down, nor a retry.
func TestDrainCookie(t *testing.T) {
	bs := testBackends(nil, 1, 1, 1, 1)
	pol := mustPolicy(t, "cookie", cookieOpts())
	ready := pol.Build(allAvailable(bs))
	// Clients pinned everywhere, each with its own variant.
	var clients []string
	pinned := map[string]*Backend{}
	for range 64 {
		pk := mustPick(t, ready, cookieRequest())
		c := parseSetCookie(t, pk.SetCookie)
		v := c.Name + "=" + c.Value
		clients = append(clients, v)
		pinned[v] = pk.Backend
	}
	drain := pol.Build(drainSet(bs, 2, nil))
	for _, c := range clients {
		pk := mustPick(t, drain, cookieRequest(c))
		if pk.Backend != pinned[c] || pk.Sticky != StickyKept || pk.SetCookie != "" {
			t.Fatalf("client of %s while b2 drains: %s %v, want kept", pinned[c].ID, pk.Backend.ID, pk.Sticky)
		}
	}
	for range 200 {
		if pk := mustPick(t, drain, cookieRequest()); pk.Backend == bs[2] {
			t.Fatal("a new client was placed on the draining backend")
		}
	}
	// b0 is down while b2 drains: b0's clients go to b1 or b3, and a
	// retry of a client of b2 or b0 never goes to b2 either.
	down := pol.Build(Set{All: bs, Available: []*Backend{bs[1], bs[3]}, Draining: bs[2:3]})
	pn := down.(Pinner)
	for _, c := range clients {
		pk := mustPick(t, down, cookieRequest(c))
		switch pinned[c] {
		case bs[0]:
			if pk.Backend == bs[2] || pk.Sticky != StickyRepinned {
				t.Fatalf("client of down b0: %s %v, want re-pinned off b2", pk.Backend.ID, pk.Sticky)
			}
		case bs[2]:
			if pk.Backend != bs[2] {
				t.Fatalf("client of draining b2 moved to %s", pk.Backend.ID)
			}
			if b, _, ok := pn.Repin(cookieRequest(c), []*Backend{bs[2]}); !ok || b == bs[2] || b == bs[0] {
				t.Fatalf("retry of a client of b2: %v %v, want b1 or b3", b, ok)
			}
		}
	}
	// Every backend draining: pinned clients are served, new ones are not.
	all := pol.Build(Set{All: bs, Draining: bs})
	for _, c := range clients {
		if pk := mustPick(t, all, cookieRequest(c)); pk.Backend != pinned[c] {
			t.Fatalf("every backend draining: client of %s sent to %s", pinned[c].ID, pk.Backend.ID)
		}
	}
	if _, err := all.Pick(cookieRequest()); !errors.Is(err, ErrNoBackend) {
		t.Errorf("new client, every backend draining: %v, want ErrNoBackend", err)
	}
	// Maintenance is unavailable: b2's clients move, each once, to the
	// successor they would get were b2 down, and stay when it is back.
	maint := pol.Build(maintSet(bs, 2, nil))
	for _, c := range clients {
		if pinned[c] != bs[2] {
			continue
		}
		pk := mustPick(t, maint, cookieRequest(c))
		if pk.Backend == bs[2] || pk.Sticky != StickyRepinned || pk.SetCookie == "" {
			t.Fatalf("client of b2 in maintenance: %s %v, want re-pinned", pk.Backend.ID, pk.Sticky)
		}
		moved := parseSetCookie(t, pk.SetCookie)
		again := mustPick(t, ready, cookieRequest(moved.Name+"="+moved.Value))
		if again.Backend != pk.Backend || again.Sticky != StickyKept {
			t.Fatalf("re-pinned client went to %s once b2 was back, want %s", again.Backend.ID, pk.Backend.ID)
		}
	}
}

// The keys a draining backend owns stay on it; no other key goes there,
// not even under a load bound or without a key; and when it is ready
// again, the ring is what it was.
func TestDrainHash(t *testing.T) {
	const keys = 3000
	g := &Group{}
	bs := testBackends(g, 1, 2, 1, 1)
	bounded := hashOpts("header:X-User")
	bounded.Hash.LoadFactor = 1.25
	for _, o := range []Options{hashOpts("header:X-User"), bounded} {
		pol := mustPolicy(t, "consistent-hash", o)
		home := assign(t, pol.Build(Set{All: bs, Available: bs, Group: g}), keys)
		drain := pol.Build(drainSet(bs, 1, g))
		if got := assign(t, drain, keys); !slices.Equal(got, home) {
			t.Fatalf("load factor %v: draining b1 moved keys", o.Hash.LoadFactor)
		}
		for range 100 {
			if pk := mustPick(t, drain, keyRequest("")); pk.Backend == bs[1] {
				t.Fatal("a request without a key went to the draining backend")
			}
		}
		if o.Hash.LoadFactor == 0 {
			continue
		}
		// b0 full: its keys walk on clockwise, past b1's points.
		for range 20 {
			bs[0].Begin()
		}
		for k := range keys {
			if home[k] != "b0" {
				continue
			}
			if pk := mustPick(t, drain, keyRequest("user-"+strconv.Itoa(k))); pk.Backend == bs[0] || pk.Backend == bs[1] {
				t.Fatalf("key of full b0 went to %s, want an available backend with room", pk.Backend.ID)
			}
		}
		for range 20 {
			bs[0].Done()
		}
	}
	// Maintenance: b1 leaves the ring and its keys move as when it is down.
	pol := mustPolicy(t, "consistent-hash", hashOpts("header:X-User"))
	down := assign(t, pol.Build(maintSet(bs, 1, nil)), keys)
	if slices.Contains(down, "b1") {
		t.Error("a key went to b1 in maintenance")
	}
	only := pol.Build(Set{All: bs, Draining: bs[1:2]})
	if _, err := only.Pick(keyRequest("")); !errors.Is(err, ErrNoBackend) {
		t.Errorf("no key, only a draining backend: %v, want ErrNoBackend", err)
	}
	k := keyOn(t, pol.Build(allAvailable(bs)), "b1")
	if pk := mustPick(t, only, keyRequest(k)); pk.Backend != bs[1] {
		t.Errorf("key of b1, only b1 draining: %s, want b1", pk.Backend.ID)
	}
}

// A session the table holds for a draining backend stays there; unknown
// sessions and retries go elsewhere; Sessions tells how many are left.
func TestDrainLearn(t *testing.T) {
	bs := testBackends(nil, 1, 1, 1)
	p, clock := newLearn(t, learnOpts(1000, time.Minute))
	ready := p.Build(allAvailable(bs))
	for i := range 30 {
		learn(t, ready, bs[i%3], testSessionCookie+"=s"+strconv.Itoa(i))
	}
	drain := p.Build(drainSet(bs, 0, nil))
	for i := range 30 {
		expectPick(t, drain, sessionRequest("s"+strconv.Itoa(i)), bs[i%3], StickyKept)
	}
	for i := range 60 {
		if pk := mustPick(t, drain, sessionRequest("new"+strconv.Itoa(i))); pk.Backend == bs[0] {
			t.Fatal("an unknown session went to the draining backend")
		}
	}
	for range 10 {
		if b, _, ok := drain.(Pinner).Repin(sessionRequest("s0"), []*Backend{bs[0]}); !ok || b == bs[0] {
			t.Fatalf("retry of a session of b0: %v %v, want another backend", b, ok)
		}
	}
	// The retries above moved s0 off b0; deleting s3 ends another.
	if got := p.Sessions(); got["b0"] != 9 || got["b0"]+got["b1"]+got["b2"] != 30 || len(got) != 3 {
		t.Errorf("Sessions() = %v, want 9 on b0 and 30 in all", got)
	}
	learn(t, drain, bs[0], testSessionCookie+"=s3; Max-Age=0")
	if got := p.Sessions(); got["b0"] != 9 {
		t.Errorf("Sessions() at once = %v, want the count of a moment ago, 9 on b0", got)
	}
	clock.advance(time.Second) // a count is kept for a second
	if got := p.Sessions(); got["b0"] != 8 {
		t.Errorf("Sessions() after a logout on b0 = %v, want 8 on b0", got)
	}
	clock.advance(2 * time.Minute)
	if got := p.Sessions(); !maps.Equal(got, map[string]int{"b0": 0, "b1": 0, "b2": 0}) {
		t.Errorf("Sessions() after they expired = %v, want zeros", got)
	}
	only := p.Build(Set{All: bs, Draining: bs[:1]})
	if _, err := only.Pick(sessionRequest("unknown")); !errors.Is(err, ErrNoBackend) {
		t.Errorf("unknown session, only a draining backend: %v, want ErrNoBackend", err)
	}
}
