package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

type profileOptions struct {
	out      string
	duration time.Duration
	clients  int
}

// profile runs the proxy under load, takes its CPU profile over
// o.duration and writes it to o.out.
func profile(ctx context.Context, bin string, o profileOptions, out io.Writer) error {
	if o.duration < time.Second || o.clients < 3 {
		return fmt.Errorf("profile: want -duration of at least 1s and -clients of at least 3")
	}
	p, stop, err := start(ctx, bin, proxyOptions{})
	if err != nil {
		return err
	}
	defer stop()
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: o.clients, DisableCompression: true}
	defer tr.CloseIdleConnections()
	// A warm-up, so that the profile holds no connection setup.
	if _, err := load(ctx, tr, p.addr, o.clients, time.Second); err != nil {
		return err
	}

	seconds := int(math.Ceil(o.duration.Seconds()))
	type result struct {
		b   []byte
		err error
	}
	got := make(chan result, 1)
	go func() {
		b, err := fetch(ctx, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", p.admin, seconds))
		got <- result{b, err}
	}()
	n, err := load(ctx, tr, p.addr, o.clients, time.Duration(seconds)*time.Second)
	r := <-got
	if err != nil {
		return err
	}
	if r.err != nil {
		return fmt.Errorf("profile: %w", r.err)
	}
	// A CPU profile is gzipped protobuf; anything else is an error page.
	if !bytes.HasPrefix(r.b, []byte{0x1f, 0x8b}) {
		return fmt.Errorf("profile: not a profile: %.200q", r.b)
	}
	if err := os.WriteFile(o.out, r.b, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(out, "%d requests in %ds (%.0f/s) from %d clients; CPU profile (%d bytes) written to %s\n",
		n, seconds, float64(n)/float64(seconds), o.clients, len(r.b), o.out)
	return nil
}

func fetch(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err == nil && res.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s: %s", res.Status, b)
	}
	return b, err
}

// load sends requests to the proxy at addr from clients goroutines for d,
// and returns how many were answered. A third of the clients go to the
// round-robin pool; a third to the cookie pool, keeping the cookie it
// gives them; a third to the cookie pool as new clients each time.
func load(ctx context.Context, tr *http.Transport, addr string, clients int, d time.Duration) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	c := &http.Client{Transport: tr}
	var (
		n     atomic.Int64
		wg    sync.WaitGroup
		first error
		once  sync.Once
	)
	for i := range clients {
		path, keep := "/", false
		switch i % 3 {
		case 1:
			path, keep = "/sticky/", true
		case 2:
			path = "/sticky/"
		}
		wg.Go(func() {
			var cookie string
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
				if cookie != "" {
					req.Header.Set("Cookie", cookie)
				}
				res, err := c.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						once.Do(func() { first = err })
					}
					return
				}
				_, _ = io.Copy(io.Discard, res.Body)
				_ = res.Body.Close()
				if res.StatusCode != http.StatusOK {
					once.Do(func() { first = fmt.Errorf("GET %s: %s", path, res.Status) })
					return
				}
				if keep && cookie == "" {
					for _, ck := range res.Cookies() {
						cookie = ck.Name + "=" + ck.Value
					}
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	return n.Load(), first
}
