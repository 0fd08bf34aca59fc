package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// slowWait bounds the waits of the slow-client tests: the limits they set
// are a second, and at load 10 and more the cut may come several later.
const slowWait = 30 * time.Second

// bigBackend answers /big with a response it writes until a write
// fails, counting those in cut, and /body with the size of the body it
// read ("cut" if reading it failed), and anything else with "ok".
func bigBackend(t *testing.T, cut *atomic.Int32) config.Backend {
	t.Helper()
	chunk := []byte(strings.Repeat("x", 32<<10))
	u := testutil.StartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/big":
			// At most 1 GiB, or as many chunks as asked: a client that
			// reads it all is no slow one.
			n := 1 << 15
			if c, err := strconv.Atoi(r.URL.Query().Get("chunks")); err == nil {
				n = c
			}
			for range n {
				if _, err := w.Write(chunk); err != nil {
					cut.Add(1)
					return
				}
			}
		case "/body", "/later":
			if r.URL.Path == "/later" {
				// A backend slow to take the body: the proxy reads
				// none of it meanwhile.
				time.Sleep(6 * time.Second)
			}
			n, err := io.Copy(io.Discard, r.Body)
			if err != nil {
				_, _ = io.WriteString(w, "cut")
				return
			}
			_, _ = io.WriteString(w, strconv.FormatInt(n, 10))
		default:
			_, _ = io.WriteString(w, "ok")
		}
	}))
	return config.Backend{URL: u, Name: "a", Weight: 1}
}

// slowConfig routes every request to b, with passive health that ejects
// it at its first failure, so that a slow client blamed on it shows.
func slowConfig(b config.Backend) *config.Config {
	cfg := catchAll(&config.Pool{
		Name: "web", Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{b},
		Passive:  &config.Passive{Failures: 1, Eject: time.Minute, MaxEject: time.Minute},
	})
	return cfg
}

// dialSlowReader connects to addr with a small receive buffer, so that
// the proxy's writes block soon once the client stops reading.
func dialSlowReader(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	tc := c.(*net.TCPConn)
	_ = tc.SetReadBuffer(4 << 10)
	t.Cleanup(func() { _ = tc.Close() })
	return tc
}

// A client that stops reading its response is cut once a write to it
// made no progress for server.send_timeout: its connection (HTTP/1) or
// its stream (HTTP/2) is closed, the backend's connection is closed, and
// the backend is not blamed. Without the limit the request and both
// connections stayed for as long as the client did.
func TestSendTimeoutCutsClientThatStopsReading(t *testing.T) {
	for _, proto := range []string{"HTTP/1.1", "HTTP/2"} {
		t.Run(proto, func(t *testing.T) {
			var cut atomic.Int32
			cfg := slowConfig(bigBackend(t, &cut))
			cfg.Server.SendTimeout = time.Second
			log, logs := observed()
			var cert testCert
			if proto == "HTTP/2" {
				cert = newTestCert(t)
				cfg.TLS = &config.TLS{Cert: cert.certFile, Key: cert.keyFile}
			}
			s, u := startProxy(t, cfg, log)
			addr := u.Host
			if proto == "HTTP/2" {
				// The client's window is never opened beyond the
				// first 64 KiB: its stream stalls with the
				// connection still writable.
				h := dialH2(t, addr, cert)
				_ = h.c.SetDeadline(time.Now().Add(2 * slowWait))
				r := h.request(h2Fields(map[string]string{":path": "/big"}), "")
				if !r.reset {
					t.Errorf("stream answered %+v, want it reset", r)
				}
			} else {
				c := dialSlowReader(t, addr)
				if _, err := io.WriteString(c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
					t.Fatal(err)
				}
				// Nothing is read until the proxy gave up on the client.
				testutil.Eventually(t, slowWait, "the proxy to cut the client", func() bool {
					return s.slow.sends.Load() > 0
				})
				// The bytes the kernel holds still reach the client,
				// slowly through its small window; the proxy holds the
				// connection no more.
				testutil.Eventually(t, slowWait, "the proxy to close the connection", func() bool {
					served, _ := s.clientConns()
					return served == 0
				})
			}
			testutil.Eventually(t, slowWait, "the backend's response to be cut", func() bool { return cut.Load() == 1 })
			// Over HTTP/2 the reset cancels the backend request at
			// once, and the handler's write fails, and counts, after.
			testutil.Eventually(t, slowWait, "the cut to be counted", func() bool { return s.slow.sends.Load() == 1 })
			checkNoBackendBlamed(t, s, logs)
			if proto == "HTTP/2" {
				serveOther(t, addr, cert)
			} else if got := get(t, testutil.Client(t), u.String()+"/", nil); got.body != "ok" {
				t.Errorf("next client: %+v, want the backend's 200", got)
			}
		})
	}
}

// A body slower than server.min_body_rate, once its grace has passed, is
// answered 408 and counted, and the backend, which got part of it, is not
// blamed; a body sent at a fair pace, with pauses, goes through whole.
// Without the limit the trickling client held its request, and the
// backend's, until read_timeout (none by default).
func TestMinBodyRate(t *testing.T) {
	tests := []struct {
		name   string
		chunks int           // of 100 bytes each
		gap    time.Duration // between chunks
		stall  int           // after so many chunks, nothing more comes; 0 never
		want   int
	}{
		// 100 bytes, then nothing: 100 bytes allow a tenth of a second
		// more than the grace.
		{name: "stalls", chunks: 10, stall: 1, want: http.StatusRequestTimeout},
		// 60 kB at once, then nothing: they buy 12 graces of silence,
		// not 60 s, which the test's deadline of 30 s does not reach.
		{name: "bursts", chunks: 700, stall: 600, want: http.StatusRequestTimeout},
		// 10,000 B/s, far above the 1,000 asked.
		{name: "steady", chunks: 20, gap: 10 * time.Millisecond, want: http.StatusOK},
	}
	for _, proto := range []string{"HTTP/1.1", "HTTP/2"} {
		for _, tt := range tests {
			t.Run(proto+"/"+tt.name, func(t *testing.T) {
				var cut atomic.Int32
				cfg := slowConfig(bigBackend(t, &cut))
				cfg.Server.MinBodyRate = 1000
				cfg.Server.MinBodyRateGrace = time.Second
				log, logs := observed()
				var cert testCert
				if proto == "HTTP/2" {
					cert = newTestCert(t)
					cfg.TLS = &config.TLS{Cert: cert.certFile, Key: cert.keyFile}
				}
				s, u := startProxy(t, cfg, log)
				size := 100 * tt.chunks
				chunk := strings.Repeat("y", 100)
				send := func(write func(last bool, b string) error) {
					for i := range tt.chunks {
						if tt.stall > 0 && i == tt.stall {
							return
						}
						time.Sleep(tt.gap)
						if err := write(i == tt.chunks-1, chunk); err != nil {
							t.Errorf("chunk %d: %v", i, err)
							return
						}
					}
				}
				var status int
				var body string
				if proto == "HTTP/2" {
					h := dialH2(t, u.Host, cert)
					_ = h.c.SetDeadline(time.Now().Add(slowWait))
					id := h.open()
					fields := h2Fields(map[string]string{":method": "POST", ":path": "/body"},
						field{"content-length", strconv.Itoa(size)})
					if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.encode(fields), EndHeaders: true}); err != nil {
						t.Fatal(err)
					}
					send(func(last bool, b string) error { return h.fr.WriteData(id, last, []byte(b)) })
					r := h.answer(id)
					status, body = r.status, r.body
				} else {
					c, err := net.Dial("tcp", u.Host)
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					_ = c.SetDeadline(time.Now().Add(slowWait))
					if _, err := io.WriteString(c, "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: "+strconv.Itoa(size)+"\r\n\r\n"); err != nil {
						t.Fatal(err)
					}
					send(func(_ bool, b string) error { _, err := io.WriteString(c, b); return err })
					res, err := http.ReadResponse(bufio.NewReader(c), nil)
					if err != nil {
						t.Fatal(err)
					}
					b, _ := io.ReadAll(res.Body)
					status, body = res.StatusCode, string(b)
				}
				if status != tt.want {
					t.Fatalf("answered %d %q, want %d", status, body, tt.want)
				}
				if tt.want == http.StatusOK && body != strconv.Itoa(size) {
					t.Errorf("backend read %q, want the %d bytes sent", body, size)
				}
				wantCut := uint64(0)
				if tt.stall > 0 {
					wantCut = 1
				}
				if n := s.slow.bodies.Load(); n != wantCut {
					t.Errorf("affinity_slow_clients_total{reason=\"body\"} = %d, want %d", n, wantCut)
				}
				checkNoBackendBlamed(t, s, logs)
			})
		}
	}
}

// Only the time the proxy waits for the client counts against
// min_body_rate: a backend that takes a body slowly holds the proxy's reads
// back, and the client, which would send at once, is not cut for it.
// Counted from the start of the body instead, the client fell below the
// rate while the backend slept.
func TestMinBodyRateCountsOnlyWaits(t *testing.T) {
	var cut atomic.Int32
	cfg := slowConfig(bigBackend(t, &cut))
	// 2 MiB/s: by the end of the backend's sleep of 6 s, what the
	// socket buffers between proxy and backend hold (a few MiB) would
	// allow far less than that.
	cfg.Server.MinBodyRate = 2 << 20
	cfg.Server.MinBodyRateGrace = time.Second
	log, logs := observed()
	s, u := startProxy(t, cfg, log)
	const size = 24 << 20
	res, err := testutil.Client(t).Post(u.String()+"/later", "application/octet-stream", io.LimitReader(zeros{}, size))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK || string(b) != strconv.Itoa(size) {
		t.Errorf("answered %d %q, want the backend's 200 with the whole body read", res.StatusCode, b)
	}
	if n := s.slow.bodies.Load(); n != 0 {
		t.Errorf("%d bodies cut, want none", n)
	}
	checkNoBackendBlamed(t, s, logs)
}

// zeros reads as endless zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// openFiles counts the descriptors the process holds open.
func openFiles(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(fds)
}

// Many slow clients at once (clients that stop reading a response of 8
// MiB, bodies that stall after 10 bytes, and over HTTP/1 heads that never
// end) hold only their own connections or streams: other clients are
// served meanwhile, each slow one is cut at its limit, and once their
// connections are closed the goroutines and descriptors of the process
// are back where they were. Without send_timeout and min_body_rate the
// slow readers and bodies were held for as long as their clients stayed.
func TestManySlowClientsHoldOnlyTheirOwn(t *testing.T) {
	if testing.Short() {
		t.Skip("600 slow clients")
	}
	for _, proto := range []string{"HTTP/1.1", "HTTP/2"} {
		t.Run(proto, func(t *testing.T) {
			// Of each kind. An HTTP/1 client that stops reading
			// leaves the proxy's send buffer full, which grows to 4
			// MiB on loopback: 200 of them held 870 MB of the kernel's
			// socket memory, enough to bring it under pressure when
			// other tests ran, and cut connections the test did not
			// count. An HTTP/2 stream holds a window of 64 KiB.
			n := uint64(200)
			if proto == "HTTP/1.1" {
				n = 64
			}
			var cut atomic.Int32
			cfg := slowConfig(bigBackend(t, &cut))
			cfg.Server.SendTimeout = time.Second
			cfg.Server.MinBodyRate = 1000
			cfg.Server.MinBodyRateGrace = time.Second
			cfg.Server.ReadHeaderTimeout = time.Second
			var cert testCert
			if proto == "HTTP/2" {
				cert = newTestCert(t)
				cfg.TLS = &config.TLS{Cert: cert.certFile, Key: cert.keyFile}
			}
			s, u := startProxy(t, cfg, nil)
			client := testutil.Client(t)
			normal := func() {
				if proto == "HTTP/2" {
					h := dialH2(t, u.Host, cert)
					defer h.c.Close()
					if r := h.request(h2Fields(nil), ""); r.body != "ok" {
						t.Errorf("normal client: %+v, want the backend's 200", r)
					}
				} else if got := get(t, client, u.String()+"/", nil); got.body != "ok" {
					t.Errorf("normal client: %+v, want the backend's 200", got)
				}
			}
			normal()
			client.CloseIdleConnections()
			testutil.Eventually(t, slowWait, "the first client's connection to close", func() bool {
				served, _ := s.clientConns()
				return served == 0
			})
			baseG, baseF := runtime.NumGoroutine(), openFiles(t)

			var closers []io.Closer
			defer func() {
				for _, c := range closers {
					_ = c.Close()
				}
			}()
			const body = "POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789"
			if proto == "HTTP/2" {
				// 20 connections of 10 streams for each kind; a
				// goroutine reads each connection's frames and never
				// opens a window.
				for range n / 10 {
					readers, bodies := dialH2(t, u.Host, cert), dialH2(t, u.Host, cert)
					for _, h := range []*h2Conn{readers, bodies} {
						closers = append(closers, h.c)
						_ = h.c.SetDeadline(time.Time{})
					}
					for range 10 {
						fields := h2Fields(map[string]string{":path": "/big?chunks=256"})
						if err := readers.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: readers.open(), BlockFragment: readers.encode(fields), EndHeaders: true, EndStream: true}); err != nil {
							t.Fatal(err)
						}
						id := bodies.open()
						fields = h2Fields(map[string]string{":method": "POST", ":path": "/body"}, field{"content-length", "1000"})
						if err := bodies.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: bodies.encode(fields), EndHeaders: true}); err != nil {
							t.Fatal(err)
						}
						if err := bodies.fr.WriteData(id, false, []byte("0123456789")); err != nil {
							t.Fatal(err)
						}
					}
					for _, h := range []*h2Conn{readers, bodies} {
						go func() {
							for {
								if _, err := h.fr.ReadFrame(); err != nil {
									return
								}
							}
						}()
					}
				}
			} else {
				for i := range 3 * n {
					c := dialSlowReader(t, u.Host)
					closers = append(closers, c)
					msg := []string{"GET /big?chunks=256 HTTP/1.1\r\nHost: x\r\n\r\n", body, "GET / HTTP/1.1\r\nHost: x\r\n"}[i%3]
					if _, err := io.WriteString(c, msg); err != nil {
						t.Fatal(err)
					}
				}
			}
			for range 20 {
				normal()
			}
			for end := time.Now().Add(2 * slowWait); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
				if s.slow.sends.Load() >= n && s.slow.bodies.Load() >= n {
					break
				}
			}
			served, _ := s.clientConns()
			t.Logf("cut %d sends and %d bodies, %d connections open, %d backend responses cut", s.slow.sends.Load(), s.slow.bodies.Load(), served, cut.Load())
			if got := s.slow.sends.Load(); got != n {
				t.Errorf("%d sends cut, want %d", got, n)
			}
			if got := s.slow.bodies.Load(); got != n {
				t.Errorf("%d bodies cut, want %d", got, n)
			}
			client.CloseIdleConnections()
			if proto == "HTTP/1.1" {
				testutil.Eventually(t, slowWait, "the proxy to close every slow connection", func() bool {
					served, _ := s.clientConns()
					return served == 0
				})
			}
			for _, c := range closers {
				_ = c.Close()
			}
			// A few goroutines may come and go (the transport's, the
			// timers'); per slow client there were two or three.
			const slack = 10
			testutil.Eventually(t, slowWait, "goroutines and descriptors to come back", func() bool {
				return runtime.NumGoroutine() <= baseG+slack && openFiles(t) <= baseF+slack
			})
			t.Logf("goroutines %d before, %d after; descriptors %d before, %d after",
				baseG, runtime.NumGoroutine(), baseF, openFiles(t))
		})
	}
}
