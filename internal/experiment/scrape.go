package experiment

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/affinityproxy/affinity/internal/harness"
)

// scraped is what a backend's /metrics told at the end of the load.
type scraped struct {
	BackendStats
	orders, duplicates int
}

// scrape reads each running backend's /metrics.
func scrape(ctx context.Context, c *harness.Cluster) map[string]scraped {
	out := map[string]scraped{}
	for _, b := range c.Backends() {
		if b.State != harness.Running {
			continue
		}
		status, _, body, err := c.Get(ctx, "http://"+b.Addr+"/metrics", nil)
		if err != nil || status != http.StatusOK {
			continue
		}
		m := parseMetrics(bytes.NewReader(body))
		out[b.Name] = scraped{
			BackendStats: BackendStats{
				Name:      b.Name,
				Sessions:  int(m["demoapp_sessions"]),
				RSSBytes:  int64(m["process_resident_memory_bytes"]),
				CacheHits: int64(m["demoapp_cache_hits_total"]),
			},
			orders:     int(m["demoapp_orders_total"]),
			duplicates: int(m["demoapp_duplicate_orders_total"]),
		}
	}
	return out
}

// parseMetrics reads Prometheus text exposition into name → value, summing
// the series of a name over its labels.
func parseMetrics(r io.Reader) map[string]float64 {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest, _ := strings.Cut(line, " ")
		if i := strings.IndexByte(name, '{'); i >= 0 {
			// Labels may hold spaces: the value follows the closing brace.
			j := strings.LastIndexByte(line, '}')
			if j < 0 {
				continue
			}
			name, rest = line[:i], line[j+1:]
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(fields[0], 64); err == nil {
			out[name] += v
		}
	}
	return out
}
