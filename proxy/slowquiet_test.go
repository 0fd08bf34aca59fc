package proxy

import (
	"bufio"
	"crypto/tls"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// A response that goes quiet with nothing left to write, the client
// having read all of it, is not cut by server.send_timeout, over HTTP/1.1
// or HTTP/2: an event stream between two events, or a backend that sent
// its headers and then computes. send_timeout bounds a write that waits,
// not the time between two. The HTTP/2 stream's deadline, left armed
// after a write, reset such streams send_timeout after their last write.
func TestSendTimeoutSparesQuietResponses(t *testing.T) {
	const (
		send  = 300 * time.Millisecond
		quiet = 4 * send
	)
	// /events writes an event, is quiet, writes another; /compute sends
	// its headers, is quiet, then writes its body.
	u := testutil.StartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		if r.URL.Path == "/events" {
			_, _ = w.Write([]byte("data: 0\n\n"))
		} else {
			w.WriteHeader(http.StatusOK)
		}
		http.NewResponseController(w).Flush()
		time.Sleep(quiet)
		_, _ = w.Write([]byte("data: 1\n\n"))
	}))
	for _, proto := range []string{"HTTP/1.1", "HTTP/2"} {
		for _, path := range []string{"/events", "/compute"} {
			t.Run(proto+path, func(t *testing.T) {
				cfg := slowConfig(config.Backend{URL: u, Name: "a", Weight: 1})
				cfg.Server.SendTimeout = send
				var c *http.Client
				if proto == "HTTP/2" {
					cert := newTestCert(t)
					cfg.TLS = &config.TLS{Cert: cert.certFile, Key: cert.keyFile}
					tr := &http.Transport{ForceAttemptHTTP2: true, TLSClientConfig: &tls.Config{RootCAs: cert.roots}}
					t.Cleanup(tr.CloseIdleConnections)
					c = &http.Client{Transport: tr, Timeout: slowWait}
				} else {
					c = testutil.Client(t)
				}
				log, _ := observed()
				s, pu := startProxy(t, cfg, log)
				target := "http://" + pu.Host + path
				if proto == "HTTP/2" {
					target = "https://" + pu.Host + path
				}
				resp, err := c.Get(target)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				var events []string
				sc := bufio.NewScanner(resp.Body)
				for sc.Scan() {
					if l := sc.Text(); l != "" {
						events = append(events, l)
					}
				}
				if err := sc.Err(); err != nil || !strings.HasPrefix(resp.Proto, proto) {
					t.Errorf("%s: read %q, then %v", resp.Proto, events, err)
				}
				want := "data: 0,data: 1"
				if path == "/compute" {
					want = "data: 1"
				}
				if got := strings.Join(events, ","); got != want {
					t.Errorf("events %q, want %q", got, want)
				}
				if n := s.slow.sends.Load(); n != 0 {
					t.Errorf("%d clients cut by send_timeout, want none", n)
				}
			})
		}
	}
}
