package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// countingReader counts what was read of it.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// An HTTP/2 upload whose backend does not take it holds no more of its
// connection's receive window than its stream's: a second upload on the
// same connection, to a backend that reads, still gets window and goes
// through, rather than waiting with none and being answered 408 by
// min_body_rate. When the connection's window was the stream's, the
// first upload held all of it.
func TestH2UploadNotHeldByAnother(t *testing.T) {
	release := make(chan struct{})
	// The backend's sockets take little, so that what the held upload
	// sends stays in the proxy.
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4<<10)
		})
	}}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	be := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		n, _ := io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, strconv.FormatInt(n, 10))
	}))
	be.Listener = ln
	be.Start()
	t.Cleanup(be.Close)

	beURL, err := url.Parse(be.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg := slowConfig(config.Backend{URL: beURL, Name: "a", Weight: 1})
	cfg.Server.MinBodyRate = 1000
	cfg.Server.MinBodyRateGrace = 500 * time.Millisecond
	cert := newTestCert(t)
	cfg.TLS = &config.TLS{Cert: cert.certFile, Key: cert.keyFile}
	log, _ := observed()
	s, u := startProxy(t, cfg, log)
	// Before the proxy shuts down, which waits for its requests.
	t.Cleanup(func() { close(release) })
	tr := &http.Transport{ForceAttemptHTTP2: true, TLSClientConfig: &tls.Config{RootCAs: cert.roots}}
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr, Timeout: slowWait}

	held := &countingReader{r: strings.NewReader(strings.Repeat("a", 8<<20))}
	go func() {
		req, _ := http.NewRequest(http.MethodPost, "https://"+u.Host+"/hold", held)
		if resp, err := c.Do(req); err == nil {
			_ = resp.Body.Close()
		}
	}()
	// The held upload has sent what it can, a stream's window at least,
	// and stopped: the proxy and the backend's socket take no more.
	var last int64
	testutil.Eventually(t, slowWait, "the held upload to stall", func() bool {
		n := held.n.Load()
		stalled := n == last && n >= h2StreamWindow
		last = n
		if !stalled {
			time.Sleep(100 * time.Millisecond)
		}
		return stalled
	})
	const size = 100 << 10
	resp, err := c.Post("https://"+u.Host+"/body", "text/plain", strings.NewReader(strings.Repeat("b", size)))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 || string(b) != strconv.Itoa(size) {
		t.Errorf("second upload answered %s %q, want 200 over HTTP/2 with the %d bytes read", resp.Status, b, size)
	}
	if n := s.slow.bodies.Load(); n != 0 {
		t.Errorf("%d bodies cut by min_body_rate, want none", n)
	}
}
