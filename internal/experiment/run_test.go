package experiment

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/harness"
	"github.com/affinityproxy/affinity/internal/testutil"
)

func affinityBinary(t *testing.T) string { return testutil.AffinityBinary(t) }

func TestRunOneCellOnRealProcesses(t *testing.T) {
	bin := affinityBinary(t)
	s := Spec{
		Name: "test", Title: "one cell", Claims: []int{1},
		Backends: 3, Users: 60, Rate: 300, Duration: 1500 * time.Millisecond, Seed: 1,
		MinItems: 3, MaxItems: 4, Work: time.Millisecond,
		Balancers: []string{"cookie"}, Stores: []string{StoreMemory},
		Faults: harness.Schedule{{At: 500 * time.Millisecond, Action: harness.Kill, Target: "b2"}},
	}
	var progress bytes.Buffer
	dir := t.TempDir()
	res, err := Run(context.Background(), s, Options{Executable: bin, Dir: dir, Progress: &progress, Command: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(progress.String())
	c := res.Cells[0]
	if c.Requests < 300 || c.Users < 50 {
		t.Errorf("%d requests from %d users, want about 450 from 60", c.Requests, c.Users)
	}
	if len(c.Faults) != 1 || c.Faults[0].Err != "" {
		t.Errorf("faults %+v, want the kill applied", c.Faults)
	}
	if c.SessionsLostPct <= 0 || c.SessionsLostPct >= 80 {
		t.Errorf("cookie × memory lost %.1f%% when 1 of 3 died, want some but not most", c.SessionsLostPct)
	}
	if c.Backends[1].Sessions != 0 || c.Backends[0].Sessions == 0 {
		t.Errorf("backends %+v: want sessions on b1 and none scraped from the dead b2", c.Backends)
	}
	for _, name := range []string{"proxy.yaml", "proxy.log", "b1.log"} {
		if _, err := os.Stat(filepath.Join(dir, "cells", "cookie_memory", name)); err != nil {
			t.Error(err)
		}
	}
	if !strings.Contains(progress.String(), "[1/1] cookie") {
		t.Errorf("progress %q", progress.String())
	}
}

// children returns the state letter (R, S, T for stopped, Z...) of each of
// this process's children by pid, from /proc; ok is false where there is no
// /proc to read.
func children() (states map[string]string, ok bool) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, false
	}
	self := strconv.Itoa(os.Getpid())
	states = map[string]string{}
	for _, e := range entries {
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
		s := string(stat)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) > 1 && fields[1] == self {
			states[e.Name()] = fields[0]
		}
	}
	return states, true
}

func TestRunStopsEveryProcessWhenCancelled(t *testing.T) {
	bin := affinityBinary(t)
	s := Spec{
		Name: "cancel", Backends: 3, Users: 20, Rate: 100, Duration: 20 * time.Second, Seed: 1,
		MinItems: 1, MaxItems: 2, Balancers: []string{"cookie", "round-robin"}, Stores: []string{StoreRedis},
		// A hung backend at the moment of the cancel must be continued and killed too.
		Faults: harness.Schedule{{At: 100 * time.Millisecond, Action: harness.Hang, Target: "b1"}},
	}
	if _, ok := children(); !ok {
		t.Skip("no /proc to see the child processes in")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	type result struct {
		res *Results
		err error
	}
	done := make(chan result, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		res, err := Run(ctx, s, Options{Executable: bin, Dir: dir})
		done <- result{res, err}
	})
	// However the test ends, Run is stopped and waited for.
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	// Cancel once the load runs and b1 is hung (state T).
	deadline := time.Now().Add(20 * time.Second)
	for {
		states, _ := children()
		stopped := slices.Contains(slices.Collect(maps.Values(states)), "T")
		if len(states) >= 4 && stopped {
			break
		}
		select {
		case r := <-done:
			t.Fatalf("Run returned before the cancel: %v", r.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no hung backend among the children %v", states)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	var r result
	select {
	case r = <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if !errors.Is(r.err, context.Canceled) {
		t.Errorf("Run = %v, want context.Canceled", r.err)
	}
	if r.res == nil || len(r.res.Cells) != 0 || r.res.Stopped == "" {
		t.Errorf("results %+v, want no cell and the reason it stopped", r.res)
	}
	if left, _ := children(); len(left) > 0 {
		t.Errorf("processes left after Run returned: %v", left)
	}
}
