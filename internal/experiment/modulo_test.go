package experiment

import (
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"testing"

	"github.com/affinityproxy/affinity/balancer"
	"github.com/affinityproxy/affinity/internal/harness"
)

func backends(n int) []*balancer.Backend {
	out := make([]*balancer.Backend, n)
	for i := range out {
		out[i] = balancer.NewBackend(harness.BackendName(i+1), &url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(9001+i)}, 1, nil)
	}
	return out
}

func pickFor(t *testing.T, p balancer.Picker, user string) string {
	t.Helper()
	r, _ := http.NewRequest(http.MethodGet, "/", nil)
	if user != "" {
		r.Header.Set(headerUser, user)
	}
	pk, err := p.Pick(r)
	if err != nil {
		t.Fatal(err)
	}
	return pk.Backend.ID
}

func TestModuloHashIsRegistered(t *testing.T) {
	if !balancer.Known(ModuloHash) {
		t.Fatalf("%s not in %v", ModuloHash, balancer.Names())
	}
}

func TestModuloHashMovesMostUsersWhenABackendJoins(t *testing.T) {
	pol, err := balancer.New(ModuloHash, balancer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	three, four := backends(3), backends(4)
	before := pol.Build(balancer.Set{All: three, Available: three})
	after := pol.Build(balancer.Set{All: four, Available: four})
	const users = 3000
	moved, perBackend := 0, map[string]int{}
	for i := range users {
		u := "u" + strconv.Itoa(i)
		a, b := pickFor(t, before, u), pickFor(t, after, u)
		if a != pickFor(t, before, u) {
			t.Fatalf("user %s picked differently twice", u)
		}
		perBackend[a]++
		if a != b {
			moved++
		}
	}
	// Modulo 3 and modulo 4 agree on a hash only when h mod 12 < 3: 1/4.
	if share := float64(moved) / users; share < 0.70 || share > 0.80 {
		t.Errorf("moved %.2f of users going 3 → 4, want about 0.75", share)
	}
	for id, n := range perBackend {
		if n < users/3*8/10 {
			t.Errorf("%s got %d of %d users: hash spreads unevenly", id, n, users)
		}
	}
}

func TestModuloHashWithoutKeyRotates(t *testing.T) {
	pol, _ := balancer.New(ModuloHash, balancer.Options{})
	bs := backends(3)
	p := pol.Build(balancer.Set{All: bs, Available: bs})
	seen := map[string]bool{}
	for range 3 {
		seen[pickFor(t, p, "")] = true
	}
	if len(seen) != 3 {
		t.Errorf("three keyless requests reached %v, want all three backends", seen)
	}
	empty := pol.Build(balancer.Set{})
	r, _ := http.NewRequest(http.MethodGet, "/", nil)
	if _, err := empty.Pick(r); !errors.Is(err, balancer.ErrNoBackend) {
		t.Errorf("no backends: %v, want ErrNoBackend", err)
	}
}
