// Package harness drives affinity on real processes, for the chaos tests
// and the experiments alike: a supervisor of child processes (Proc), the
// demo backends and the proxy in front of them (Cluster), an open-loop load
// of virtual users with cookie jars (Load, NewClient), and a schedule of
// faults applied at set times (Schedule): kill, hang, restart, add, remove,
// reload and the store's outages.
//
// Everything listens on 127.0.0.1, every load is bounded in count and
// time, and every process a Cluster starts is killed and reaped by Close,
// whatever happened; on Linux a child also dies with the harness.
package harness
