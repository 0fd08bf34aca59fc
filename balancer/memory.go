package balancer

// learnEntryBytes is about what one session of a full learn table holds on
// the heap (BenchmarkLearnMemory).
const learnEntryBytes = 120

// MemoryEstimate returns about how many bytes of heap a pool of policy typ
// with options o over backends of these weights holds once built, at most:
// the rotation every policy places new clients by (4 bytes a slot of its
// period), a consistent-hash ring (12 bytes a point) and its index, a full
// learn table. It is meant to warn of a config that would need unusual
// memory, not to account for it; a rebuild holds the old tables too until
// they are collected.
func MemoryEstimate(typ string, o Options, weights []int) int64 {
	g := 0
	for _, w := range weights {
		g = gcd(g, max(w, 1))
	}
	var period int64
	for _, w := range weights {
		period += int64(max(w, 1) / g)
	}
	n := 4 * period
	switch typ {
	case "consistent-hash":
		points := min(int64(o.Hash.VirtualNodes)*period, maxRingPoints+int64(len(weights)))
		n += 12*points + 4*(int64(1)<<prefixBits(int(points))+1)
	case "learn":
		n += learnEntryBytes * int64(o.Learn.MaxEntries)
	}
	return n
}
