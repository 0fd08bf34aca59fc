package proxy

import (
	"errors"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/affinityproxy/affinity/config"
	"github.com/affinityproxy/affinity/internal/testutil"
)

// The attacks on HTTP/2 servers that cost little to send and much to
// serve, each on one connection of its own, while another client asks for
// a page: what the process holds (goroutines, heap) stays within bounds
// far below what the attack would take unchecked, the attacking
// connection is closed or what it sends stops costing anything, and the
// other client is served. Every flood is bounded in frames and in time.

// floodTime bounds how long a flood may write.
const floodTime = 20 * time.Second

// usage is what the process holds: its goroutines, and its heap in use
// after a collection.
type usage struct {
	goroutines int
	heap       uint64
}

func measureUsage() usage {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return usage{runtime.NumGoroutine(), m.HeapInuse}
}

// peak keeps the largest of the usages it was shown.
type peak struct {
	mu  sync.Mutex
	max usage
}

func (p *peak) sample() {
	u := measureUsage()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.max.goroutines = max(p.max.goroutines, u.goroutines)
	p.max.heap = max(p.max.heap, u.heap)
}

func (p *peak) get() usage {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.max
}

// within fails t if the peak p grew from base by more than the given
// goroutines and bytes of heap.
func within(t *testing.T, base, p usage, goroutines int, heap uint64) {
	t.Helper()
	t.Logf("goroutines %d, peak %d; heap in use %d KiB, peak %d KiB", base.goroutines, p.goroutines, base.heap>>10, p.heap>>10)
	if p.goroutines > base.goroutines+goroutines {
		t.Errorf("goroutines grew from %d to %d, more than %d", base.goroutines, p.goroutines, goroutines)
	}
	if p.heap > base.heap+heap {
		t.Errorf("heap in use grew from %d KiB to %d KiB, more than %d KiB", base.heap>>10, p.heap>>10, heap>>10)
	}
}

// holdBackend answers a request for /hold only when it is cancelled,
// counting those it holds; any other request at once, with "ok".
type holdBackend struct {
	url        *url.URL
	held, most atomic.Int64
}

func startHoldBackend(t *testing.T) *holdBackend {
	t.Helper()
	b := &holdBackend{}
	b.url = testutil.StartServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/hold" {
			_, _ = w.Write([]byte("ok"))
			return
		}
		n := b.held.Add(1)
		defer b.held.Add(-1)
		for m := b.most.Load(); n > m && !b.most.CompareAndSwap(m, n); m = b.most.Load() {
		}
		<-r.Context().Done()
	}))
	return b
}

// floodProxy serves a TLS listener over b with the given idle timeout (0
// for the default).
func floodProxy(t *testing.T, b *holdBackend, idle time.Duration) (string, testCert) {
	t.Helper()
	cfg := catchAll(&config.Pool{Name: "web", Balancer: config.Balancer{Type: "round-robin"},
		Backends: []config.Backend{{URL: b.url, Name: "a"}}})
	cfg.Server.IdleTimeout = idle
	_, addr, cert := startH2Proxy(t, cfg)
	return addr, cert
}

// flood writes frames with write (frame i) on h's connection and, once
// it runs, calls meanwhile (if not nil), which may ask for a page on a
// connection of its own. It writes until n frames are written and
// meanwhile has returned, until a write fails, or for floodTime at most. It
// returns how many frames it wrote, the error that stopped it (nil if none
// did), and the most the process held while it ran, sampled every thousand
// frames.
func flood(h *h2Conn, n int, write func(i int) error, meanwhile func()) (int, usage, error) {
	const sampleEvery = 1000
	var p peak
	started, done := make(chan struct{}), make(chan struct{})
	type result struct {
		sent int
		err  error
	}
	ended := make(chan result, 1)
	go func() {
		start := sync.OnceFunc(func() { close(started) })
		defer start()
		if err := h.c.SetWriteDeadline(time.Now().Add(floodTime)); err != nil {
			ended <- result{0, err}
			return
		}
		for i := 0; ; i++ {
			if i >= n {
				select {
				case <-done:
					ended <- result{i, nil}
					return
				default:
				}
			}
			if i%sampleEvery == 0 {
				p.sample()
				if i > 0 {
					start()
				}
			}
			if err := write(i); err != nil {
				ended <- result{i, err}
				return
			}
		}
	}()
	<-started
	if meanwhile != nil {
		meanwhile()
	}
	close(done)
	r := <-ended
	return r.sent, p.get(), r.err
}

// serveOther asks addr for a page on a connection of its own, and fails t
// unless the backend's answer comes.
func serveOther(t *testing.T, addr string, cert testCert) {
	t.Helper()
	if r := dialH2(t, addr, cert).request(h2Fields(nil), ""); r.status != http.StatusOK || r.body != "ok" {
		t.Errorf("another client: %+v, want the backend's 200", r)
	}
}

// drain reads what the proxy sent on h's connection until it closes, for
// at most d.
func drain(h *h2Conn, d time.Duration) error {
	if err := h.c.SetReadDeadline(time.Now().Add(d)); err != nil {
		return err
	}
	for {
		if _, err := h.fr.ReadFrame(); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return err
			}
			return nil
		}
	}
}

// settled waits until the process holds no more goroutines than base and
// slack, as it should once the flood's connection is closed.
func settled(t *testing.T, base, slack int) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for runtime.NumGoroutine() > base+slack {
		if time.Now().After(deadline) {
			t.Errorf("%d goroutines after the flood, %d before", runtime.NumGoroutine(), base)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Rapid reset (CVE-2023-44487): a client opens streams and resets each at
// once, which costs it nothing of its stream limit. net/http runs at most
// h2MaxStreams handlers for a connection, however many streams were
// opened; a stream reset before its request is forwarded is never
// forwarded, and the backend request of one reset later is cancelled, so
// the backend holds nothing for the attacker once the resets are read.
func TestH2RapidReset(t *testing.T) {
	b := startHoldBackend(t)
	addr, cert := floodProxy(t, b, 0)
	h := dialH2(t, addr, cert)
	// The proxy's answers are read and dropped, so that its writes never
	// wait on the attacker; reading ends when the connection does.
	var goAway atomic.Pointer[http2.ErrCode]
	read := make(chan struct{})
	go func() {
		defer close(read)
		_ = h.c.SetReadDeadline(time.Now().Add(floodTime + waitFor))
		for {
			f, err := h.fr.ReadFrame()
			if err != nil {
				return
			}
			if g, ok := f.(*http2.GoAwayFrame); ok {
				goAway.Store(&g.ErrCode)
			}
		}
	}()
	base := measureUsage()
	const streams = 20_000
	block := h.encode(h2Fields(map[string]string{":path": "/hold"}))
	sent, most, err := flood(h, streams, func(int) error {
		id := h.open()
		if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true, EndStream: true}); err != nil {
			return err
		}
		return h.fr.WriteRSTStream(id, http2.ErrCodeCancel)
	}, func() { serveOther(t, addr, cert) })
	t.Logf("%d streams opened and reset (%v); the backend held %d at most", sent, err, b.most.Load())
	if err != nil && goAway.Load() == nil {
		t.Errorf("the flood stopped at %d streams: %v, with no GOAWAY", sent, err)
	}
	if c := goAway.Load(); c != nil && *c != http2.ErrCodeEnhanceYourCalm {
		t.Errorf("GOAWAY %v, want ENHANCE_YOUR_CALM if any", *c)
	}
	// A handler goroutine per stream running, a few per backend
	// request; the streams' states and queued handlers in the heap.
	within(t, base, most, 10*h2MaxStreams, 64<<20)
	if n := b.most.Load(); n > h2MaxStreams {
		t.Errorf("the backend held %d requests at once, more than the %d streams a connection may run", n, h2MaxStreams)
	}
	// Once the proxy has read every reset, nothing is left at the
	// backend though the connection stays open.
	deadline := time.Now().Add(waitFor)
	for b.held.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := b.held.Load(); n > 0 {
		t.Errorf("the backend still holds %d requests of reset streams", n)
	}
	_ = h.c.Close()
	<-read
	settled(t, base.goroutines, 10)
}

// Floods of frames that each cost the server a little work and ask for no
// response, sent by a client that reads nothing back:
//   - CONTINUATION frames of a header block that never ends (CVE-2024-27316
//     in Apache, CVE-2023-45288 in Go): net/http decodes the block as it
//     comes, keeps no more of it than max_header_bytes, and closes the
//     connection at the first frame past that;
//   - empty CONTINUATION frames, which add nothing to the block: 9 bytes
//     read and dropped each;
//   - SETTINGS frames, each to be acknowledged: the acknowledgements due
//     are one flag, however many come;
//   - PING frames, each to be answered: net/http closes the connection
//     when 10,000 answers wait for a client that does not read them.
//
// A connection on which no request is open closes at idle_timeout
// whatever frames arrive on it, which bounds the floods net/http does not
// cut itself: each is sent again to a proxy with a short idle_timeout, and
// its connection must close.
func TestH2FrameFloods(t *testing.T) {
	value := strings.Repeat("v", 4000)
	tests := []struct {
		name string
		// frames is how many to send at least, and the other client
		// served; or, when cut, the most that may be written before
		// the proxy closes the connection
		frames int
		cut    bool
		write  func(h *h2Conn, i int) error
	}{
		// Some thousands go out before the close is seen, into the
		// sockets' buffers.
		{"CONTINUATION with header fields", 10_000, true, func(h *h2Conn, i int) error {
			if i == 0 {
				return h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.open(), BlockFragment: h.encode(h2Fields(nil))})
			}
			return h.fr.WriteContinuation(1, false, h.encode([]field{{"x-flood-" + string(rune('a'+i%26)), value}}))
		}},
		{"empty CONTINUATION", 10_000, false, func(h *h2Conn, i int) error {
			if i == 0 {
				return h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: h.open(), BlockFragment: h.encode(h2Fields(nil))})
			}
			return h.fr.WriteContinuation(1, false, nil)
		}},
		{"SETTINGS", 10_000, false, func(h *h2Conn, i int) error {
			return h.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: uint32(65535 + i%2)})
		}},
		{"PING", 10_000, false, func(h *h2Conn, i int) error {
			return h.fr.WritePing(false, [8]byte{byte(i), byte(i >> 8), byte(i >> 16)})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The default idle_timeout, which no flood waits for.
			addr, cert := floodProxy(t, startHoldBackend(t), 0)
			h := dialH2(t, addr, cert)
			base := measureUsage()
			sent, most, err := flood(h, tt.frames, func(i int) error { return tt.write(h, i) }, func() { serveOther(t, addr, cert) })
			t.Logf("%d frames written (%v)", sent, err)
			switch {
			case errors.Is(err, os.ErrDeadlineExceeded):
				t.Errorf("writing blocked for %v: the proxy stopped reading without closing", floodTime)
			case tt.cut && err == nil:
				t.Errorf("%d frames written, and the connection is still open", sent)
			case !tt.cut && err != nil:
				t.Errorf("the connection closed before %d frames were written: %v", tt.frames, err)
			}
			within(t, base, most, 50, 32<<20)
			_ = h.c.Close()
			settled(t, base.goroutines, 10)
			if tt.cut {
				return
			}
			const idle = time.Second
			addr, cert = floodProxy(t, startHoldBackend(t), idle)
			h = dialH2(t, addr, cert)
			sent, _, err = flood(h, tt.frames, func(i int) error { return tt.write(h, i) }, nil)
			switch {
			case errors.Is(err, os.ErrDeadlineExceeded):
				t.Errorf("with idle_timeout %v, writing blocked for %v", idle, floodTime)
			case err == nil:
				// All written before idle_timeout: the connection
				// closes then, however much is still to read.
				if err := drain(h, idle+waitFor); err != nil {
					t.Errorf("with idle_timeout %v, the connection did not close: %v", idle, err)
				}
			}
			t.Logf("with idle_timeout %v: %d frames written (%v)", idle, sent, err)
		})
	}
}

// The proxy reads frames of h2MaxFrame bytes at most, and says so in its
// SETTINGS. A larger one is a connection error, FRAME_SIZE_ERROR (h2spec
// 4.2 #3 sends a HEADERS frame of 20,000 bytes); request bodies and header
// blocks come in more frames.
func TestH2FrameSize(t *testing.T) {
	post := h2Fields(map[string]string{":method": "POST"})
	fields := func(n int) []field {
		var fs []field
		for i := range n {
			fs = append(fs, field{"x-large-" + string(rune('a'+i)), strings.Repeat("v", 4000)})
		}
		return fs
	}
	tests := []struct {
		name  string
		write func(h *h2Conn, id uint32) error
		ok    bool // answered 200; else the connection is closed with FRAME_SIZE_ERROR
	}{
		{"HEADERS past the size", func(h *h2Conn, id uint32) error {
			return h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.encode(h2Fields(nil, fields(5)...)),
				EndHeaders: true, EndStream: true})
		}, false},
		{"DATA past the size", func(h *h2Conn, id uint32) error {
			err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.encode(post), EndHeaders: true})
			if err != nil {
				return err
			}
			return h.fr.WriteData(id, true, make([]byte, h2MaxFrame+1))
		}, false},
		{"unknown type past the size", func(h *h2Conn, id uint32) error {
			return h.fr.WriteRawFrame(0xfe, 0, 0, make([]byte, h2MaxFrame+1))
		}, false},
		{"DATA of the size", func(h *h2Conn, id uint32) error {
			err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.encode(post), EndHeaders: true})
			if err != nil {
				return err
			}
			return h.fr.WriteData(id, true, make([]byte, h2MaxFrame))
		}, true},
		{"header block past the size, in CONTINUATION", func(h *h2Conn, id uint32) error {
			block := h.encode(h2Fields(nil, fields(5)...))
			err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block[:h2MaxFrame], EndStream: true})
			if err != nil {
				return err
			}
			return h.fr.WriteContinuation(id, true, block[h2MaxFrame:])
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, cert := floodProxy(t, startHoldBackend(t), 0)
			h := dialH2(t, addr, cert)
			id := h.open()
			if err := tt.write(h, id); err != nil {
				t.Fatal(err)
			}
			r := h.answer(id)
			switch {
			case tt.ok && (r.reset || r.status != http.StatusOK):
				t.Errorf("answer %+v, want 200", r)
			case !tt.ok && (!r.reset || r.code != http2.ErrCodeFrameSize):
				t.Errorf("answer %+v, want GOAWAY with FRAME_SIZE_ERROR", r)
			}
		})
	}
}

// A frame is read whole before it is looked at, into a buffer the
// connection keeps as large as the largest frame it read. Clients that
// each send one frame just under net/http's default limit of a mebibyte,
// of a type the server ignores, would pin a mebibyte per connection; at
// the proxy's limit the connections are closed instead.
func TestH2LargeFramesPinNoMemory(t *testing.T) {
	addr, cert := floodProxy(t, startHoldBackend(t), 0)
	base := measureUsage()
	const conns = 40
	for range conns {
		h := dialH2(t, addr, cert)
		if err := h.fr.WriteRawFrame(0xfe, 0, 0, make([]byte, 1<<20-1)); err != nil {
			t.Fatal(err)
		}
		if err := h.fr.WritePing(false, [8]byte{1}); err != nil {
			t.Fatal(err)
		}
		// The proxy has read the frame when it answers the PING, or
		// closes the connection.
		for done := false; !done; {
			f, err := h.fr.ReadFrame()
			if err != nil {
				t.Fatal(err)
			}
			switch f := f.(type) {
			case *http2.PingFrame:
				done = f.IsAck()
			case *http2.GoAwayFrame:
				done = true
				if f.ErrCode != http2.ErrCodeFrameSize {
					t.Errorf("GOAWAY %v, want FRAME_SIZE_ERROR", f.ErrCode)
				}
			}
		}
	}
	within(t, base, measureUsage(), 3*conns, 16<<20)
}
