package demoapp

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync/atomic"
)

// metrics are the app's counters, written at /metrics in the Prometheus
// text format. By hand: a dozen lines do not justify a client library.
type metrics struct {
	requests  atomic.Int64 // shop requests, whatever their outcome
	storeOps  atomic.Int64
	loads     atomic.Int64
	cacheHits atomic.Int64
	cacheMiss atomic.Int64
	orders    atomic.Int64
	dupOrders atomic.Int64
	errLost   atomic.Int64
	errStale  atomic.Int64
	errStore  atomic.Int64
}

// record adds what one shop request cost and how it ended (an error code,
// or "" for success).
func (m *metrics) record(u *usage, code string) {
	m.requests.Add(1)
	m.storeOps.Add(int64(u.ops))
	m.loads.Add(int64(u.loads))
	switch u.cache {
	case "hit":
		m.cacheHits.Add(1)
	case "miss":
		m.cacheMiss.Add(1)
	}
	switch code {
	case CodeSessionLost:
		m.errLost.Add(1)
	case CodeSessionStale:
		m.errStale.Add(1)
	case CodeStoreUnavailable:
		m.errStore.Add(1)
	}
}

// serveMetrics writes the metrics; sessions is the number of sessions the
// store holds in this process.
func (m *metrics) serveMetrics(w http.ResponseWriter, sessions int) {
	var b bytes.Buffer
	metric := func(name, typ, help string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}
	metric("demoapp_sessions", "gauge", "Shop sessions held in this process's memory: memory store sessions or near-cache entries.")
	fmt.Fprintf(&b, "demoapp_sessions %d\n", sessions)
	metric("demoapp_requests_total", "counter", "Shop requests served, whatever their outcome.")
	fmt.Fprintf(&b, "demoapp_requests_total %d\n", m.requests.Load())
	metric("demoapp_store_ops_total", "counter", "Round trips to the session store.")
	fmt.Fprintf(&b, "demoapp_store_ops_total %d\n", m.storeOps.Load())
	metric("demoapp_store_loads_total", "counter", "Loads of a user's data from the session store, each costing the simulated work.")
	fmt.Fprintf(&b, "demoapp_store_loads_total %d\n", m.loads.Load())
	metric("demoapp_cache_hits_total", "counter", "Requests served from the near-cache.")
	fmt.Fprintf(&b, "demoapp_cache_hits_total %d\n", m.cacheHits.Load())
	metric("demoapp_cache_misses_total", "counter", "Requests that found no current copy in the near-cache.")
	fmt.Fprintf(&b, "demoapp_cache_misses_total %d\n", m.cacheMiss.Load())
	metric("demoapp_orders_total", "counter", "Checkouts that placed an order, duplicates included; replays of an idempotent checkout are not counted.")
	fmt.Fprintf(&b, "demoapp_orders_total %d\n", m.orders.Load())
	metric("demoapp_duplicate_orders_total", "counter", "Orders placed for a cart that already had one: a checkout that ran twice.")
	fmt.Fprintf(&b, "demoapp_duplicate_orders_total %d\n", m.dupOrders.Load())
	metric("demoapp_session_errors_total", "counter", "Shop requests that failed, by kind.")
	for _, e := range []struct {
		kind string
		n    *atomic.Int64
	}{{"lost", &m.errLost}, {"stale", &m.errStale}, {"store", &m.errStore}} {
		fmt.Fprintf(&b, "demoapp_session_errors_total{kind=%q} %d\n", e.kind, e.n.Load())
	}
	metric("process_resident_memory_bytes", "gauge", "Resident memory size in bytes (0 where /proc is not available).")
	fmt.Fprintf(&b, "process_resident_memory_bytes %d\n", residentBytes())

	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(b.Bytes())
}

// residentBytes reads the process's resident set size from /proc/self/statm
// (in pages, its second field); 0 where that file does not exist.
func residentBytes() int64 {
	f, err := os.Open("/proc/self/statm")
	if err != nil {
		return 0
	}
	defer f.Close()
	var size, resident int64
	if _, err := fmt.Fscan(io.LimitReader(f, 256), &size, &resident); err != nil {
		return 0
	}
	return resident * int64(os.Getpagesize())
}
