package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/testutil"
)

func TestSweeperTick(t *testing.T) {
	tests := []struct {
		name     string
		timeouts []time.Duration
		want     time.Duration
	}{
		{"defaults", []time.Duration{10 * time.Second, 0, 2 * time.Minute}, time.Second},
		{"short", []time.Duration{100 * time.Millisecond, time.Minute, time.Second}, 10 * time.Millisecond},
		{"tiny", []time.Duration{time.Millisecond}, minTick},
		{"a tenth", []time.Duration{3 * time.Second}, 300 * time.Millisecond},
		{"none", []time.Duration{0, 0}, maxTick},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := newSweeper(shortestTimeout(tt.timeouts...)).tick; got != tt.want {
				t.Errorf("tick %v, want %v", got, tt.want)
			}
		})
	}
}

// connPair returns a client connection on loopback, as a boundConn kept by
// sw, and the server's end of it.
func connPair(t *testing.T, sw *sweeper) (*boundConn, net.Conn) {
	t.Helper()
	ln := testutil.Listen(t)
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	bc := &boundConn{Conn: peer, dl: coarse{sw: sw}}
	t.Cleanup(func() {
		_ = c.Close()
		_ = peer.Close()
	})
	return bc, c
}

// readResult reads one byte from bc in a goroutine; the channel has the
// error when it returns.
func readResult(bc *boundConn) <-chan error {
	done := make(chan error, 1)
	go func() {
		_, err := bc.Read(make([]byte, 1))
		done <- err
	}()
	return done
}

func TestCoarseDeadline(t *testing.T) {
	t.Run("expires at the sweep after it", func(t *testing.T) {
		sw := newSweeper(100 * time.Millisecond)
		bc, _ := connPair(t, sw)
		sw.add(bc)
		sw.run()
		defer sw.end()
		start := time.Now()
		if err := bc.SetReadDeadline(start.Add(50 * time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-readResult(bc):
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("read error %v, want a timeout", err)
			}
			if d := time.Since(start); d < 50*time.Millisecond {
				t.Errorf("timed out after %v, before the deadline", d)
			}
		case <-time.After(waitFor):
			t.Fatal("read still blocked long after its deadline")
		}
	})
	t.Run("moved before the sweep", func(t *testing.T) {
		sw := newSweeper(100 * time.Millisecond)
		bc, peer := connPair(t, sw)
		_ = bc.SetReadDeadline(time.Now().Add(time.Millisecond))
		_ = bc.SetReadDeadline(time.Time{})
		bc.expire(time.Now().Add(time.Hour).UnixNano()) // a sweep long after
		done := readResult(bc)
		if _, err := io.WriteString(peer, "x"); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Errorf("read error %v after the deadline was cleared", err)
		}
	})
	t.Run("moved after the sweep expired it", func(t *testing.T) {
		sw := newSweeper(100 * time.Millisecond)
		bc, peer := connPair(t, sw)
		_ = bc.SetReadDeadline(time.Now().Add(time.Millisecond))
		bc.expire(time.Now().Add(time.Hour).UnixNano())
		_ = bc.SetReadDeadline(time.Now().Add(time.Hour))
		done := readResult(bc)
		if _, err := io.WriteString(peer, "x"); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Errorf("read error %v with the deadline an hour away", err)
		}
	})
	t.Run("a timeout the deadline no longer calls for", func(t *testing.T) {
		sw := newSweeper(100 * time.Millisecond)
		bc, peer := connPair(t, sw)
		// The sweep's past deadline reached the socket, and the
		// deadline moved without it: as when a read and a move race.
		bc.dl.at, bc.dl.past = time.Now().Add(time.Hour).UnixNano(), true
		_ = bc.Conn.SetReadDeadline(aLongTimeAgo)
		done := readResult(bc)
		if _, err := io.WriteString(peer, "x"); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Errorf("read error %v: the stale timeout was not retried", err)
		}
	})
	t.Run("past deadline ends a read at once", func(t *testing.T) {
		sw := newSweeper(time.Hour) // no sweep would come in time
		bc, _ := connPair(t, sw)
		done := readResult(bc)
		_ = bc.SetReadDeadline(aLongTimeAgo)
		select {
		case err := <-done:
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("read error %v, want a timeout", err)
			}
		case <-time.After(waitFor):
			t.Fatal("read not interrupted")
		}
	})
	t.Run("exact after a protocol switch", func(t *testing.T) {
		sw := newSweeper(time.Hour)
		bc, _ := connPair(t, sw)
		_ = bc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		bc.makeExact()
		select {
		case err := <-readResult(bc):
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("read error %v, want a timeout", err)
			}
		case <-time.After(waitFor):
			t.Fatal("deadline set before the switch did not reach the socket")
		}
	})
}
