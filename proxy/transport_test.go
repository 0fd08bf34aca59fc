package proxy

import (
	"testing"
	"time"

	"github.com/affinityproxy/affinity/config"
)

func TestNewTransport(t *testing.T) {
	tr := newTransport(config.Timeouts{Connect: time.Second, ResponseHeader: 2 * time.Second, IdleConn: 3 * time.Second})
	defer tr.CloseIdleConnections()
	if tr.Proxy != nil {
		t.Error("transport would take a proxy from the environment")
	}
	if tr.ResponseHeaderTimeout != 2*time.Second || tr.TLSHandshakeTimeout != time.Second {
		t.Errorf("timeouts %v, %v; want the configured ones", tr.ResponseHeaderTimeout, tr.TLSHandshakeTimeout)
	}
	if !tr.DisableCompression || tr.ForceAttemptHTTP2 {
		t.Error("transport would decompress bodies or force HTTP/2")
	}
	if !tr.DisableKeepAlives {
		t.Error("transport keeps connections for a next request")
	}
}

func TestBufferPool(t *testing.T) {
	bp := newBufferPool()
	b := bp.Get()
	if len(b) != bufSize || cap(b) != bufSize {
		t.Fatalf("Get: len %d cap %d, want %d", len(b), cap(b), bufSize)
	}
	bp.Put(b)
	bp.Put(make([]byte, 10)) // not from the pool: dropped, not handed out
	for range 3 {
		if g := bp.Get(); len(g) != bufSize {
			t.Fatalf("Get after Put of a foreign slice: len %d", len(g))
		}
	}
}
