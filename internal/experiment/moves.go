package experiment

import (
	"math"
	"slices"
	"time"
)

// moves maps each user seen on both sides of a membership change to the
// last backend that answered it before and the first after.
type moves map[string][2]string

// movesAcross pairs, for every user answered by a backend both before
// "before" and from "after" on, the last backend before with the first one
// after. Between the two the proxy is still taking the change in (a killed
// backend's requests retried elsewhere until its health checks take it
// out), so a user's first answer there is not where the pool sends it.
func movesAcross(samples []Sample, before, after time.Duration) moves {
	type seen struct {
		lastAt, firstAt time.Duration
		last, first     string
	}
	users := map[string]*seen{}
	for i := range samples {
		s := &samples[i]
		if s.Backend == "" || (s.At >= before && s.At < after) {
			continue
		}
		u := users[s.User]
		if u == nil {
			u = &seen{lastAt: -1, firstAt: math.MaxInt64}
			users[s.User] = u
		}
		if s.At < before && s.At >= u.lastAt {
			u.lastAt, u.last = s.At, s.Backend
		}
		if s.At >= after && s.At < u.firstAt {
			u.firstAt, u.first = s.At, s.Backend
		}
	}
	m := moves{}
	for id, u := range users {
		if u.last != "" && u.first != "" {
			m[id] = [2]string{u.last, u.first}
		}
	}
	return m
}

// movedPct returns the share of m's users whose backend differs, or nil
// when m is empty.
func (m moves) movedPct() *float64 {
	return m.share(func(_ string, be [2]string) bool { return be[0] != be[1] })
}

// share returns the share of m's users for which moved holds, or nil when
// m is empty.
func (m moves) share(moved func(user string, be [2]string) bool) *float64 {
	if len(m) == 0 {
		return nil
	}
	n := 0
	for u, be := range m {
		if moved(u, be) {
			n++
		}
	}
	return ptr(pct(n, len(m)))
}

// victimUsers returns the share of users answered before "at" whose last
// answer came from backend, or nil when no user was answered before.
func victimUsers(samples []Sample, at time.Duration, backend string) *float64 {
	last := map[string]Sample{}
	for _, s := range samples {
		if s.Backend == "" || s.At >= at {
			continue
		}
		if p, ok := last[s.User]; !ok || s.At >= p.At {
			last[s.User] = s
		}
	}
	if len(last) == 0 {
		return nil
	}
	n := 0
	for _, s := range last {
		if s.Backend == backend {
			n++
		}
	}
	return ptr(pct(n, len(last)))
}

// servedBy returns the share of the responses from "from" on that came from
// one of names, or nil when there were none.
func servedBy(samples []Sample, from time.Duration, names []string) *float64 {
	total, n := 0, 0
	for i := range samples {
		s := &samples[i]
		if s.Backend == "" || s.At < from {
			continue
		}
		total++
		if slices.Contains(names, s.Backend) {
			n++
		}
	}
	if total == 0 {
		return nil
	}
	return ptr(pct(n, total))
}

// newcomers returns the share of the responses from names, from "from" on,
// whose users were first seen at or after "since"; nil when names served
// nothing then.
func newcomers(samples []Sample, since, from time.Duration, names []string) *float64 {
	first := map[string]time.Duration{}
	for i := range samples {
		s := &samples[i]
		if f, ok := first[s.User]; !ok || s.At < f {
			first[s.User] = s.At
		}
	}
	total, n := 0, 0
	for i := range samples {
		s := &samples[i]
		if s.At < from || !slices.Contains(names, s.Backend) {
			continue
		}
		total++
		if first[s.User] >= since {
			n++
		}
	}
	if total == 0 {
		return nil
	}
	return ptr(pct(n, total))
}
