// Package watch tells when a file changes, however it is changed: written in
// place, replaced by renaming another file over it (as many editors save),
// or swapped behind a symlink (as Kubernetes updates a mounted ConfigMap).
// A burst of changes is reported once, when the file has been quiet for a
// while, so that a reader never sees a half-written file twice.
package watch

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Watcher reports changes of one file on C.
type Watcher struct {
	// C receives a value when the file changed and has been quiet since
	// for the Watcher's quiet period. It holds at most one value: changes
	// made before it is read are reported by that one value.
	C <-chan struct{}

	w     *fsnotify.Watcher
	done  chan struct{}
	close sync.Once
	err   error // of closing w
	wg    sync.WaitGroup
}

// New watches the file at path, which need not exist yet, until Close. It
// watches the file's directory rather than the file: a file replaced by a
// rename is a new file, which a watch on the old one would never see.
// Events of other names in the directory are ignored, unless path is a
// symlink when New is called: then any change there may change what it
// points to.
func New(path string, quiet time.Duration) (*Watcher, error) {
	if quiet <= 0 {
		return nil, fmt.Errorf("watch %s: quiet period %v must be positive", path, quiet)
	}
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", path, err)
	}
	if err := fw.Add(filepath.Dir(path)); err != nil {
		_ = fw.Close()
		return nil, fmt.Errorf("watch %s: %w", path, err)
	}
	f := filter{name: filepath.Base(path)}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSymlink != 0 {
		f.anyName = true
	}
	c := make(chan struct{}, 1)
	w := &Watcher{C: c, w: fw, done: make(chan struct{})}
	w.wg.Go(func() { w.run(f, quiet, c) })
	return w, nil
}

// Close stops the watch and waits for it to end. No value is sent on C
// after Close returns.
func (w *Watcher) Close() error {
	w.close.Do(func() {
		close(w.done)
		w.err = w.w.Close()
		w.wg.Wait()
	})
	return w.err
}

// run turns matching events into values on c, once each burst has been
// quiet for quiet.
func (w *Watcher) run(f filter, quiet time.Duration, c chan<- struct{}) {
	t := time.NewTimer(quiet)
	t.Stop()
	defer t.Stop()
	for {
		select {
		case <-w.done:
			return
		case ev, ok := <-w.w.Events:
			if !ok {
				return
			}
			if f.match(ev) {
				t.Reset(quiet)
			}
		case _, ok := <-w.w.Errors:
			if !ok {
				return
			}
			// An error means events may have been lost (an overflow
			// of the kernel's queue, say), the file's among them:
			// reading it again is the safe answer.
			t.Reset(quiet)
		case <-t.C:
			select {
			case c <- struct{}{}:
			default: // a change is already reported and not yet read
			}
		}
	}
}

// filter selects the events that may change the watched file.
type filter struct {
	name    string // base name of the file
	anyName bool   // the file is a symlink: any change may retarget it
}

// match reports whether ev may have changed the file. A change of mode
// alone does not change what a reader reads.
func (f filter) match(ev fsnotify.Event) bool {
	if ev.Op == fsnotify.Chmod {
		return false
	}
	return f.anyName || filepath.Base(ev.Name) == f.name
}
