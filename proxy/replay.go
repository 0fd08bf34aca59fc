package proxy

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"sync"
)

// replay lets a request body be sent to another backend after an attempt
// failed, without holding it back from the first. The first attempt streams
// the client's body through as it arrives and keeps a copy of what it read,
// while that stays within limit; a later attempt reads the copy, then goes
// on with the client's body where the copy ends. So a retry is possible
// only while the copy holds all that was read (whole): with limit 0, only
// while no attempt has read any of the body. A nil *replay stands for no
// body.
type replay struct {
	body   io.ReadCloser // the client's
	length int64         // its declared length; -1 unknown

	mu    sync.Mutex
	limit int64         // bytes the copy may hold
	buf   *bytes.Buffer // the copy; nil until a byte is kept, and once released
	read  int64         // bytes read from body
	whole bool          // buf holds all that was read
	ended bool          // body reached io.EOF
	cur   *attemptBody  // the latest attempt's body, the one that may read
	// refs counts the holders of the body and its copy: the retrier until
	// it returns, and each attempt's body until the transport closes it,
	// which may be after RoundTrip returned (a body still streaming to the
	// backend). The last closes the client's body, as a RoundTripper must,
	// and returns buf to the pool.
	refs int
}

// newReplay prepares the body of out for retries, keeping a copy of up to
// limit bytes of it; none when its declared length is over limit.
func newReplay(out *http.Request, limit int64) *replay {
	if out.ContentLength > limit {
		limit = 0
	}
	return &replay{body: out.Body, length: out.ContentLength, limit: limit, whole: true, refs: 1}
}

// attach returns a shallow copy of out carrying the first attempt's body,
// leaving out to its owner as a RoundTripper must. GetBody stays nil, so
// that http.Transport never sends the body again on its own.
func (r *replay) attach(out *http.Request) *http.Request {
	first := new(http.Request)
	*first = *out
	first.Body = r.attempt()
	return first
}

// attempt returns the body of a new attempt, which reads from the start.
func (r *replay) attempt() *attemptBody {
	a := &attemptBody{r: r}
	r.mu.Lock()
	r.refs++
	r.cur = a
	r.mu.Unlock()
	return a
}

// resendable reports whether the body can be sent again from its start. A
// nil replay is no body, which can.
func (r *replay) resendable() bool {
	if r == nil {
		return true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.whole
}

// done ends the copying, once the retrier has decided that no attempt
// follows, and drops the retrier's hold on the copy.
func (r *replay) done() {
	if r == nil {
		return
	}
	r.mu.Lock()
	r.limit = 0
	r.mu.Unlock()
	_ = r.release()
}

// release drops one hold on the body and its copy; the last closes the one
// and returns the other to the pool.
func (r *replay) release() error {
	r.mu.Lock()
	r.refs--
	last := r.refs == 0
	var buf *bytes.Buffer
	if last {
		buf, r.buf = r.buf, nil
	}
	r.mu.Unlock()
	if buf != nil {
		putBodyBuffer(buf)
	}
	if last {
		return r.body.Close()
	}
	return nil
}

// keep adds p, just read from the client, to the copy if the copy is still
// whole and the body so far fits in limit; r.mu is held.
func (r *replay) keep(p []byte) {
	r.read += int64(len(p))
	if len(p) == 0 || !r.whole {
		return
	}
	if r.read > r.limit {
		r.whole = false
		return
	}
	if r.buf == nil {
		r.buf = bodyBuffers.Get().(*bytes.Buffer)
		if r.length > 0 {
			r.buf.Grow(int(r.length))
		}
	}
	r.buf.Write(p)
}

// attemptBody is the request body of one attempt: the copy, then the rest
// of the client's body. The transport may read and close it from different
// goroutines.
type attemptBody struct {
	r      *replay
	off    int64 // bytes of the body this attempt has read; under r.mu
	closed bool  // under r.mu
}

var (
	errBodyClosed = errors.New("proxy: read of a closed request body")
	// errBodyLost is read by an attempt that would need bytes of the
	// body that no copy holds; the retrier never makes such an attempt.
	errBodyLost = errors.New("proxy: request body not kept for another attempt")
)

func (a *attemptBody) Read(p []byte) (int, error) {
	r := a.r
	r.mu.Lock()
	switch {
	case a.closed || a != r.cur:
		r.mu.Unlock()
		return 0, errBodyClosed
	case r.buf != nil && a.off < int64(r.buf.Len()):
		n := copy(p, r.buf.Bytes()[a.off:])
		a.off += int64(n)
		r.mu.Unlock()
		return n, nil
	case a.off != r.read:
		r.mu.Unlock()
		return 0, errBodyLost
	case r.ended:
		r.mu.Unlock()
		return 0, io.EOF
	}
	r.mu.Unlock()
	// The client's body may take long to come: it is read unlocked, by
	// this attempt alone (the latest; the transport reads an attempt's
	// body no more once RoundTrip returned an error).
	n, err := r.body.Read(p)
	r.mu.Lock()
	r.keep(p[:n])
	a.off += int64(n)
	if err == io.EOF {
		r.ended = true
	}
	r.mu.Unlock()
	return n, err
}

// Close ends the attempt's hold on the body and its copy.
func (a *attemptBody) Close() error {
	r := a.r
	r.mu.Lock()
	if a.closed {
		r.mu.Unlock()
		return nil
	}
	a.closed = true
	r.mu.Unlock()
	return r.release()
}

// maxPooledBody is the largest buffer kept for reuse; bigger ones, from
// pools configured with a large retry_max_body, go to the garbage collector
// rather than pin their memory.
const maxPooledBody = 1 << 20

var bodyBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func putBodyBuffer(b *bytes.Buffer) {
	if b.Cap() > maxPooledBody {
		return
	}
	b.Reset()
	bodyBuffers.Put(b)
}
