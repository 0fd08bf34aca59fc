package proxy

import (
	"bufio"
	"crypto/tls"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
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

// A client that reads steadily is not cut by server.send_timeout, though
// it reads far less per send_timeout than the kernel lets drain before it
// wakes a write blocked on the full socket (a third or so of a send
// buffer of megabytes): progress is bytes leaving the socket. Where a
// write returning was the only progress, a reader at 320 kB/s was cut at
// the first send_timeout.
func TestSendTimeoutSparesSteadyReaders(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the socket's queue is read on Linux only")
	}
	const (
		send  = time.Second
		chunk = 8 << 10
		every = 25 * time.Millisecond
		reads = int(5 * send / every)
	)
	var cut atomic.Int32
	cfg := slowConfig(bigBackend(t, &cut))
	cfg.Server.SendTimeout = send
	log, _ := observed()
	s, u := startProxy(t, cfg, log)
	c := dialSlowReader(t, u.Host)
	if _, err := io.WriteString(c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, chunk)
	var got int
	for range reads {
		_ = c.SetReadDeadline(time.Now().Add(slowWait))
		n, err := io.ReadFull(c, buf)
		got += n
		if err != nil {
			t.Fatalf("after %d bytes: %v", got, err)
		}
		time.Sleep(every)
	}
	if n := s.slow.sends.Load(); n != 0 || cut.Load() != 0 {
		t.Errorf("%d clients cut by send_timeout after %d bytes read, want none", n, got)
	}
}
