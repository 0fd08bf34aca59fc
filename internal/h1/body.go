package h1

import (
	"errors"
	"io"
	"net/http"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// bodyWriter writes a request with a body to its connection in a goroutine
// of its own while the exchange reads the response, as http.Transport's
// writeLoop does: a backend may answer before it has read the whole body
// (a 413, a 401, a 417), and the answer, not the body, ends the wait. It is
// also the body Request.Write reads, which notes the client's failures and,
// for "Expect: 100-continue", holds the body back until the backend asks
// for it.
//
// Its connection is given back for another request only once the writing
// has ended well (giveBack): a connection whose request is still being
// written when its response ends is closed, unless the writing ends within
// writeWait, as http.Transport does.
type bodyWriter struct {
	hc      *conn
	rc      io.ReadCloser // the request's body
	timeout time.Duration // the response header timeout, armed once the request is written
	done    chan struct{} // closed once the writing has ended
	quit    chan struct{} // closed by an exchange that failed
	// cont carries the exchange's word to a body waiting for a 100
	// Continue: send, or not; nil when the request expects none.
	cont            chan bool
	continueTimeout time.Duration // how long the body waits for the word at most
	asked           bool          // no wait for a 100 Continue (any more); the writer's
	bodyErr         error         // the first error reading rc; the writer's until done

	mu       sync.Mutex
	answered bool  // the final response's head is read
	err      error // what the writing ended with; set before done closes
}

// errNoContinue ends the writing of a body that the backend did not ask
// for before its final response, on a connection that is to close.
var errNoContinue = errors.New("body not sent: the backend answered without asking for it")

// startBody starts writing r, whose body is not empty, on hc.
func (c *Client) startBody(hc *conn, r *http.Request) *bodyWriter {
	w := &bodyWriter{hc: hc, rc: r.Body, timeout: c.headerTimeout, done: make(chan struct{}), quit: make(chan struct{}),
		continueTimeout: c.continueTimeout, asked: true}
	// As http.Transport: a request that came as HTTP/1.0 waits for none.
	if r.ProtoAtLeast(1, 1) && expectsContinue(r) {
		w.cont, w.asked = make(chan bool, 1), false
	}
	out := new(http.Request)
	*out = *r
	out.Body = w
	go w.write(out)
	return w
}

// expectsContinue reports whether r asks the backend for a 100 Continue
// before its body, as net/http reads it: by its first Expect value.
func expectsContinue(r *http.Request) bool {
	v := r.Header["Expect"]
	return len(v) > 0 && httpguts.HeaderValuesContainsToken(v[:1], "100-continue")
}

// write writes r, whose body is w, and flushes it.
func (w *bodyWriter) write(r *http.Request) {
	err := r.Write(w.hc.bw)
	if err == nil {
		err = w.hc.bw.Flush()
	}
	switch {
	case w.bodyErr != nil:
		// The backend waits for the rest of a body that will not come:
		// the request is over, as http.Transport ends it.
		w.hc.abort()
	case err != nil && w.hc.w.n == 0:
		// Nothing was sent, so nothing can be answered: the exchange
		// ends now with a request not sent. Once bytes have gone, a
		// failed write leaves the response to be read, which a backend
		// that answered early and closed may have sent.
		w.hc.abort()
	}
	w.mu.Lock()
	w.err = err
	if !w.answered && w.timeout > 0 {
		// As http.Transport, the response header timeout runs from the
		// end of the writing; a failed write arms it too, so that a
		// backend that answers nothing on a broken connection is not
		// waited for longer.
		_ = w.hc.nc.SetReadDeadline(time.Now().Add(w.timeout))
	}
	w.mu.Unlock()
	close(w.done)
}

func (w *bodyWriter) Read(p []byte) (int, error) {
	if !w.asked {
		w.asked = true
		if !w.awaitContinue() {
			return 0, errNoContinue
		}
	}
	n, err := w.rc.Read(p)
	if err != nil && err != io.EOF && w.bodyErr == nil {
		w.bodyErr = err
	}
	return n, err
}

func (w *bodyWriter) Close() error { return w.rc.Close() }

// awaitContinue waits for the word to send the body: a 100 Continue, the
// final response on a connection that stays open, or continueTimeout
// passing. It reports false when the body is not to be sent.
func (w *bodyWriter) awaitContinue() bool {
	t := time.NewTimer(w.continueTimeout)
	defer t.Stop()
	select {
	case send := <-w.cont:
		return send
	case <-t.C:
		return true
	case <-w.quit:
		return false
	}
}

// proceed gives a body waiting for a 100 Continue its word, unless it has
// one already.
func (w *bodyWriter) proceed(send bool) {
	if w.cont == nil {
		return
	}
	select {
	case w.cont <- send:
	default:
	}
}

// headRead tells w that the final response's head is read, so that the
// writing arms no header timeout any more, and gives a body still waiting
// for a 100 Continue its word.
func (w *bodyWriter) headRead(send bool) {
	w.mu.Lock()
	w.answered = true
	w.mu.Unlock()
	w.proceed(send)
}

// writeWait is how long a connection whose response has ended waits for
// the writing of its request to end before it is closed rather than given
// back, http.Transport's maxWriteWaitBeforeConnReuse: a backend mostly
// answers once it has read the whole body, when the writing is ending.
const writeWait = 50 * time.Millisecond

// giveBack gives hc back to c's idle connections if keep and its request,
// written by w (nil for a request without a body), was written whole, and
// closes it otherwise. When the writing is still going, it waits for it in
// a goroutine of its own, so that the response's reader, for whom the
// response has ended, does not wait.
func (c *Client) giveBack(hc *conn, keep bool, w *bodyWriter) {
	if !keep || w == nil {
		c.release(hc, keep)
		return
	}
	select {
	case <-w.done:
		c.release(hc, w.err == nil)
		return
	default:
	}
	go func() {
		t := time.NewTimer(writeWait)
		defer t.Stop()
		select {
		case <-w.done:
			c.release(hc, w.err == nil)
		case <-t.C:
			c.release(hc, false)
		}
	}()
}

// end is a failed exchange's: it stops a wait for a 100 Continue, waits for
// the writing to end (once RoundTrip has returned, the body is read no
// more), and returns the client's body's error if reading it failed, err
// otherwise, as http.Transport does.
func (w *bodyWriter) end(err error) error {
	close(w.quit)
	<-w.done
	if w.bodyErr != nil {
		return w.bodyErr
	}
	return err
}
