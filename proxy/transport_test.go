package proxy

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/config"
)

func TestNewTransport(t *testing.T) {
	tr := newTransport(config.Timeouts{Connect: time.Second, ResponseHeader: 2 * time.Second, IdleConn: 3 * time.Second})
	defer tr.CloseIdleConnections()
	t.Setenv("HTTP_PROXY", "http://127.0.0.1:1")
	if u, err := tr.Proxy(httptest.NewRequest(http.MethodGet, "http://b/", nil)); u != nil || err != nil {
		t.Errorf("transport takes proxy %v, %v from the environment", u, err)
	}
	if tr.ResponseHeaderTimeout != 2*time.Second || tr.IdleConnTimeout != 3*time.Second || tr.TLSHandshakeTimeout != time.Second {
		t.Errorf("timeouts %v, %v, %v; want the configured ones",
			tr.ResponseHeaderTimeout, tr.IdleConnTimeout, tr.TLSHandshakeTimeout)
	}
	if tr.MaxIdleConns != maxIdleConns || tr.MaxIdleConnsPerHost != maxIdleConnsPerHost {
		t.Errorf("idle pool %d / %d per host", tr.MaxIdleConns, tr.MaxIdleConnsPerHost)
	}
	if !tr.DisableCompression || tr.ForceAttemptHTTP2 {
		t.Error("transport would decompress bodies or force HTTP/2")
	}
}

// TestOneSend: within one attempt of the retrier, the transport gets one
// connection and no more.
func TestOneSend(t *testing.T) {
	ex := new(exchange)
	r := httptest.NewRequest(http.MethodGet, "http://b/", nil)
	r = r.WithContext(context.WithValue(r.Context(), exchangeKey{}, ex))
	if u, err := oneSend(r); u != nil || err != nil {
		t.Fatalf("first connection: %v, %v; want no proxy", u, err)
	}
	if _, err := oneSend(r); !errors.Is(err, errResend) {
		t.Fatalf("second connection: %v, want %v", err, errResend)
	}
	ex.sends = 0 // the retrier's next attempt
	if _, err := oneSend(r); err != nil {
		t.Fatalf("next attempt: %v", err)
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
