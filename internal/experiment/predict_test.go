package experiment

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/harness"
)

// TestUsersMovedMatchesTheHashAfterAKill plays, for the failover preset's
// 150 users under modulo-hash, what the proxy does when b2 is killed: until
// its health checks take it out (0.5 s), b2's users are retried on another
// backend and everyone else stays put; then the pool of two rehashes
// everyone. Measured once the pool settled, users moved must be what the
// hash itself predicts; measured from the kill's first answers, it would
// miss the rehash.
func TestUsersMovedMatchesTheHashAfterAKill(t *testing.T) {
	ch, err := newChooser(choice{name: ModuloHash}, StoreMemory)
	if err != nil {
		t.Fatal(err)
	}
	all, left := []string{"b1", "b2", "b3"}, []string{"b1", "b3"}
	kill := applied(harness.Kill, "b2", 2*time.Second, 2500*time.Millisecond)
	var samples []Sample
	for i := range 150 {
		u := fmt.Sprintf("u%04d", i+1)
		before := ch.pick(u, all)
		during := before
		if before == "b2" {
			during = "b3" // the retry's backend
		}
		samples = append(samples,
			smp(u, 1.9, stepAdd, before, ""),
			smp(u, 2.1, stepAdd, during, ""),
			smp(u, 2.6, stepAdd, ch.pick(u, left), ""))
	}
	r := summarize(ModuloHash, StoreMemory, samples, 0, 4*time.Second, all, 3, []harness.Applied{kill})
	predict(&r, ch, samples, all, 3)
	if r.UsersMovedPct == nil || r.UsersMovedPredictedPct == nil || r.UsersMovedOf != 150 {
		t.Fatalf("users moved %v of %d, predicted %v", r.UsersMovedPct, r.UsersMovedOf, r.UsersMovedPredictedPct)
	}
	if *r.UsersMovedPct != *r.UsersMovedPredictedPct {
		t.Errorf("users moved %.1f%%, the hash predicts %.1f%%", *r.UsersMovedPct, *r.UsersMovedPredictedPct)
	}
	// Modulo 3 against modulo 2 keeps a user only where h mod 6 is 0 or 4
	// (b1 and b3 by both): about 2/3 move.
	if got := *r.UsersMovedPct; math.Abs(got-200.0/3) > 10 {
		t.Errorf("users moved %.1f%%, want about two thirds", got)
	}
	early := movesAcross(samples, kill.Start, kill.End).movedPct()
	if *early >= *r.UsersMovedPct-10 {
		t.Errorf("measured from the kill itself: %.1f%%, want far fewer than the %.1f%% the rehash moves", *early, *r.UsersMovedPct)
	}
	// Every request went to the key's first choice but those retried
	// while b2 was dying: a third of the middle sample.
	if r.LeftFirstChoicePct == nil || *r.LeftFirstChoicePct <= 0 || *r.LeftFirstChoicePct > 100.0/3/3+5 {
		t.Errorf("left first choice %v, want the retried third of one sample in three", r.LeftFirstChoicePct)
	}
}

func TestChooserIsTheConsistentHashOfTheConfig(t *testing.T) {
	ch, err := newChooser(choice{name: "consistent-hash"}, StoreMemory)
	if err != nil {
		t.Fatal(err)
	}
	three, four := []string{"b1", "b2", "b3"}, []string{"b1", "b2", "b3", "b4"}
	moved := 0
	for i := range 3000 {
		u := fmt.Sprintf("u%04d", i)
		a, b := ch.pick(u, three), ch.pick(u, four)
		if a != b {
			moved++
			if b != "b4" {
				t.Fatalf("%s moved from %s to %s: a ring moves keys only to the new backend", u, a, b)
			}
		}
	}
	if share := float64(moved) / 3000; share < 0.15 || share > 0.35 {
		t.Errorf("moved %.2f of users going 3 → 4, want about 1/4", share)
	}
	if _, err := newChooser(choice{name: "no-such"}, StoreMemory); err == nil {
		t.Error("a chooser of an unknown balancer")
	}
}
