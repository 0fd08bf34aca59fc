//go:build unix

package proxy

import (
	"context"
	"errors"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/testutil"
)

// A listener that another holder keeps a copy of (as internal/upgrade keeps
// each socket to hand over) stops listening when a reload moves the proxy
// to another address: its address refuses connections rather than queue
// them for no one.
func TestReloadMovedListenerRefusesWhenShared(t *testing.T) {
	tests := []struct {
		name    string
		shared  bool
		refused bool
	}{
		{"socket held elsewhere too", true, true},
		{"socket of its own", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var copies []*os.File
			t.Cleanup(func() {
				for _, f := range copies {
					_ = f.Close()
				}
			})
			listen := func(network, addr string) (net.Listener, error) {
				ln, err := net.Listen(network, addr)
				if err == nil && tt.shared {
					// The copy another process would hold.
					f, ferr := ln.(*net.TCPListener).File()
					if ferr != nil {
						return nil, ferr
					}
					copies = append(copies, f)
				}
				return ln, err
			}
			cfg := catchAll(poolOf("web", "round-robin", cookieOptions(), startBackends(t, "a")...))
			s, err := NewServer(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tt.shared {
				s.UseListen(listen, nil)
			}
			ln, err := listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			old := ln.Addr().String()
			served := make(chan error, 1)
			go func() { served <- s.Serve(ln) }()
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				if err := s.Shutdown(ctx); err != nil {
					t.Error(err)
				}
				<-served
			})
			testutil.Eventually(t, waitFor, "the listener bound", func() bool {
				s.lnMu.Lock()
				defer s.lnMu.Unlock()
				return len(s.bindings) == 1
			})
			next := *cfg
			next.Listen = freeLoopback(t)
			if err := s.Reload(&next); err != nil {
				t.Fatal(err)
			}
			c, err := net.DialTimeout("tcp", old, 5*time.Second)
			if err == nil {
				_ = c.Close()
			}
			if refused := errors.Is(err, syscall.ECONNREFUSED); refused != tt.refused {
				t.Errorf("dialling the old address: %v, want refused: %v", err, tt.refused)
			}
		})
	}
}

// freeLoopback returns a loopback address no one listens on now.
func freeLoopback(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
