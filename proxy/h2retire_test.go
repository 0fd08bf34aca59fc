package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// An HTTP/2 connection is never closed under a stream in flight when its
// listener stops accepting, whether a reload moves the listener, the server
// shuts down, or it hands over to another process: it is told to go away
// (GOAWAY), its streams finish, and then it closes. Closing it when its
// last stream ended, as an HTTP/1 connection between two requests is,
// loses the end of that stream's response: Go's HTTP/2 server reports a
// connection idle once the stream's last frame is queued, not sent.
func TestH2ConnectionEndsAfterItsStreams(t *testing.T) {
	body := strings.Repeat("0123456789", 3000)
	tests := []struct {
		name string
		// stop makes s stop accepting on addr, and returns what is to
		// wait for once the stream is answered (nil: nothing).
		stop func(t *testing.T, s *Server, cfg *config.Config) <-chan error
		// late: a connection accepted before, whose handshake comes
		// after, has its first request answered (a plain shutdown is
		// Go's to handle: it closes a connection silent for 5 s).
		late bool
	}{
		{"reload moves the listener", func(t *testing.T, s *Server, cfg *config.Config) <-chan error {
			moved := *cfg
			moved.Listen = testutil.FreeAddr(t)
			reload(t, s, &moved)
			return nil
		}, true},
		{"shutdown", func(_ *testing.T, s *Server, _ *config.Config) <-chan error {
			return shutdownLater(s)
		}, false},
		{"shutdown after handover", func(_ *testing.T, s *Server, _ *config.Config) <-chan error {
			s.HandOver()
			return shutdownLater(s)
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			arrived, release := make(chan struct{}, 1), make(chan struct{})
			backend := testutil.StartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/slow" {
					arrived <- struct{}{}
					<-release
				}
				_, _ = io.WriteString(w, body)
			}))
			cert := newTestCert(t)
			cfg := catchAll(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
				Backends: []config.Backend{{URL: backend, Name: "a"}}})
			cfg.TLS = &config.TLS{Cert: cert.certFile, Key: cert.keyFile}
			ln := testutil.Listen(t)
			cfg.Listen = ln.Addr().String()
			s, err := NewServer(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			served := make(chan error, 1)
			go func() { served <- s.Serve(ln) }()
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				_ = s.Shutdown(ctx)
			})
			tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: cert.roots}, ForceAttemptHTTP2: true}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, Timeout: 20 * time.Second}
			target := "https://" + cfg.Listen
			// A first stream that ends: the connection has been idle.
			if r := get(t, c, target+"/", nil); r.status != http.StatusOK {
				t.Fatalf("first GET: %d", r.status)
			}
			// Another client's connection stays idle throughout: it too
			// must be told to go away, and then ends.
			idleClosed := make(chan struct{})
			idleTr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: cert.roots}, ForceAttemptHTTP2: true,
				DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
					c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
					if err != nil {
						return nil, err
					}
					return &closeSignal{Conn: c, closed: idleClosed}, nil
				}}
			defer idleTr.CloseIdleConnections()
			if r := get(t, &http.Client{Transport: idleTr, Timeout: 20 * time.Second}, target+"/", nil); r.status != http.StatusOK {
				t.Fatalf("idle client's GET: %d", r.status)
			}
			answered := make(chan error, 1)
			go func() {
				resp, err := c.Get(target + "/slow")
				if err != nil {
					answered <- err
					return
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				switch {
				case err != nil:
					answered <- err
				case resp.ProtoMajor != 2:
					answered <- errors.New("not HTTP/2: " + resp.Proto)
				case string(b) != body:
					answered <- errors.New("body cut")
				default:
					answered <- nil
				}
			}()
			select {
			case <-arrived:
			case err := <-answered:
				t.Fatalf("the stream ended before the backend had it: %v", err)
			}
			var late net.Conn
			if tt.late {
				late, err = net.Dial("tcp", cfg.Listen)
				if err != nil {
					t.Fatal(err)
				}
				defer late.Close()
				testutil.Eventually(t, waitFor, "the late connection accepted", func() bool {
					s.lnMu.Lock()
					defer s.lnMu.Unlock()
					return freshConns(s.bindings) == 1
				})
			}
			stopped := tt.stop(t, s, cfg)
			testutil.Eventually(t, waitFor, "the listener closed", func() bool {
				c, err := net.DialTimeout("tcp", cfg.Listen, time.Second)
				if err == nil {
					_ = c.Close()
				}
				return err != nil
			})
			if late != nil {
				lateClosed := make(chan struct{})
				var dialed atomic.Bool
				lateTr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: cert.roots}, ForceAttemptHTTP2: true,
					DialContext: func(context.Context, string, string) (net.Conn, error) {
						if dialed.Swap(true) {
							return nil, errors.New("dialed again")
						}
						return &closeSignal{Conn: late, closed: lateClosed}, nil
					}}
				defer lateTr.CloseIdleConnections()
				resp, err := (&http.Client{Transport: lateTr, Timeout: 20 * time.Second}).Get(target + "/")
				if err != nil {
					t.Fatalf("the late connection's first request: %v", err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.ProtoMajor != 2 {
					t.Fatalf("the late connection is %s, not HTTP/2", resp.Proto)
				}
				select {
				case <-lateClosed:
				case <-time.After(20 * time.Second):
					t.Errorf("the late HTTP/2 connection is still open 20 s after its first request")
				}
			}
			select {
			case <-idleClosed:
			case <-time.After(20 * time.Second):
				t.Errorf("the idle HTTP/2 connection is still open 20 s after its listener stopped accepting")
			}
			close(release)
			if err := <-answered; err != nil {
				t.Fatalf("the stream in flight: %v", err)
			}
			// The connection was told to go away: the client does not
			// send another stream on it, and the old address refuses.
			if _, err := c.Get(target + "/"); err == nil {
				t.Errorf("a new stream went to the old address after it stopped accepting")
			}
			if stopped != nil {
				if err := <-stopped; err != nil {
					t.Errorf("Shutdown: %v", err)
				}
				if err := <-served; !errors.Is(err, http.ErrServerClosed) {
					t.Errorf("Serve = %v, want ErrServerClosed", err)
				}
			}
		})
	}
}

// closeSignal is a connection that closes closed as it closes.
type closeSignal struct {
	net.Conn
	closed chan struct{}
	once   sync.Once
}

func (c *closeSignal) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// shutdownLater starts s's Shutdown, bounded at 20 s, and returns its
// result.
func shutdownLater(s *Server) <-chan error {
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		stopped <- s.Shutdown(ctx)
	}()
	return stopped
}
