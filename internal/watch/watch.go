// Package watch tells when a file changes, however it is changed: written in
// place, replaced by renaming another file over it (as many editors save),
// reached through symlinks that are swapped (as Kubernetes updates a mounted
// ConfigMap, or a deploy points a "current" directory at a new release), or
// removed with its directory and created again. A burst of changes is
// reported once, when the file has been quiet for a while, so that a reader
// never sees a half-written file twice.
//
// It watches the directories that decide what the path reads: the one of
// every symlink met resolving it, and the one of the file it resolves to,
// and resolves the path again after every event there. Where a directory
// cannot be watched (it is gone, or inotify is out of watches), it checks
// the file's state every poll period instead, until the watch can be set
// again.
package watch

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
)

// pollEvery is how often a file that cannot be watched is checked.
const pollEvery = 2 * time.Second

// Watcher reports changes of one file on C.
type Watcher struct {
	// C receives a value when the file changed and has been quiet since
	// for the Watcher's quiet period. It holds at most one value: changes
	// made before it is read are reported by that one value.
	C <-chan struct{}

	path  string
	quiet time.Duration
	poll  time.Duration
	log   *zap.Logger
	w     *fsnotify.Watcher // nil when inotify cannot be had at all

	// Owned by run once it started.
	watched map[string]os.FileInfo // directories watched now, and which directory each path was
	names   map[string]bool        // paths whose events matter: links and the file
	polling bool                   // some directory could not be watched
	waiting bool                   // a directory of the path does not exist
	last    fileState              // of the file, for polling

	done  chan struct{}
	close sync.Once
	err   error // of closing w
	wg    sync.WaitGroup
}

// New watches the file at path, which need not exist yet, until Close,
// logging to log (nil: nowhere) when it has to fall back to polling and
// when it watches again. Events of other files in the directories watched
// are ignored.
func New(path string, quiet time.Duration, log *zap.Logger) (*Watcher, error) {
	return newWatcher(path, quiet, pollEvery, log, fsnotify.NewWatcher)
}

func newWatcher(path string, quiet, poll time.Duration, log *zap.Logger, notify func() (*fsnotify.Watcher, error)) (*Watcher, error) {
	if quiet <= 0 {
		return nil, fmt.Errorf("watch %s: quiet period %v must be positive", path, quiet)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", path, err)
	}
	if log == nil {
		log = zap.NewNop()
	}
	c := make(chan struct{}, 1)
	w := &Watcher{C: c, path: abs, quiet: quiet, poll: poll, log: log, watched: map[string]os.FileInfo{}, done: make(chan struct{})}
	if w.w, err = notify(); err != nil {
		log.Warn("cannot watch the config file; checking it by polling", zap.String("file", abs),
			zap.Duration("every", poll), zap.Error(err))
	}
	w.sync()
	w.last = stateOf(abs)
	w.wg.Go(func() { w.run(c) })
	return w, nil
}

// Close stops the watch and waits for it to end. No value is sent on C
// after Close returns.
func (w *Watcher) Close() error {
	w.close.Do(func() {
		close(w.done)
		if w.w != nil {
			w.err = w.w.Close()
		}
		w.wg.Wait()
	})
	return w.err
}

// run turns events that matter into values on c, once each burst has been
// quiet for quiet, and polls while some directory is not watched.
func (w *Watcher) run(c chan<- struct{}) {
	quiet := time.NewTimer(w.quiet)
	quiet.Stop()
	defer quiet.Stop()
	tick := time.NewTicker(w.poll)
	defer tick.Stop()
	var events <-chan fsnotify.Event
	var errs <-chan error
	if w.w != nil {
		events, errs = w.w.Events, w.w.Errors
	}
	for {
		select {
		case <-w.done:
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			if w.matters(ev) {
				quiet.Reset(w.quiet)
				w.sync()
			}
		case _, ok := <-errs:
			if !ok {
				return
			}
			// An error means events may have been lost (an overflow
			// of the kernel's queue, say), the file's among them:
			// reading it again is the safe answer.
			quiet.Reset(w.quiet)
			w.sync()
		case <-tick.C:
			if !w.polling {
				continue
			}
			w.sync()
			if s := stateOf(w.path); !s.same(w.last) {
				w.last = s
				quiet.Reset(w.quiet)
			}
		case <-quiet.C:
			w.last = stateOf(w.path)
			select {
			case c <- struct{}{}:
			default: // a change is already reported and not yet read
			}
		}
	}
}

// matters reports whether ev may have changed what the path reads: an event
// of a link or of the file, or a watched directory itself going away. A
// change of mode alone does not change what a reader reads.
func (w *Watcher) matters(ev fsnotify.Event) bool {
	if ev.Op == fsnotify.Chmod {
		return false
	}
	_, dir := w.watched[ev.Name]
	return w.names[ev.Name] || dir
}

// sync resolves the path again and watches the directories that now decide
// what it reads, and no others. A directory on the way that does not exist
// is waited for in its parent, which is watched instead. A directory that
// cannot be watched turns polling on until it can.
func (w *Watcher) sync() {
	// A change made between resolving the path and watching a directory
	// newly watched sends no event (a directory renamed into place just
	// before its parent's watch began): so the path is resolved again
	// after a new watch, until it resolves as it did.
	for range maxLinks {
		entries, added := w.syncOnce()
		if !added {
			return
		}
		if again, _ := resolve(w.path); slices.Equal(again, entries) {
			return
		}
	}
}

// syncOnce is one round of sync: it returns the entries it resolved, and
// whether it watched a directory it did not before.
func (w *Watcher) syncOnce() (entries []entry, added bool) {
	entries, complete := resolve(w.path)
	w.names = make(map[string]bool, len(entries))
	dirs := map[string]bool{}
	for _, e := range entries {
		w.names[filepath.Join(e.dir, e.name)] = true
		dirs[e.dir] = true
	}
	var failed error
	if w.w == nil {
		failed = errors.New("no inotify instance")
	}
	for dir := range dirs {
		if w.w == nil {
			continue
		}
		// A watch follows a directory, not its path: when another
		// directory was renamed to the path (a deploy swapping a whole
		// directory), the old watch sees only the old one, wherever it
		// went, so the path is watched afresh.
		fi, err := os.Stat(dir)
		if old, ok := w.watched[dir]; ok {
			if err == nil && os.SameFile(old, fi) {
				continue
			}
			// The old directory may be gone, and its watch with it.
			_ = w.w.Remove(dir)
			delete(w.watched, dir)
		}
		if err == nil {
			err = w.w.Add(dir)
		}
		if err != nil {
			failed = err
			continue
		}
		w.watched[dir] = fi
		added = true
	}
	for dir := range w.watched {
		if !dirs[dir] {
			// Gone already when the directory was removed.
			_ = w.w.Remove(dir)
			delete(w.watched, dir)
		}
	}
	switch missing := entries[len(entries)-1]; {
	case !complete && !w.waiting:
		w.log.Warn("a directory of the config file is gone; watching for it to return",
			zap.String("file", w.path), zap.String("missing", filepath.Join(missing.dir, missing.name)))
	case complete && w.waiting:
		w.log.Info("the config file's directory is back; watching it again", zap.String("file", w.path))
	}
	w.waiting = !complete
	switch polling := failed != nil; {
	case polling && !w.polling && w.w != nil:
		w.log.Warn("cannot watch the config file's directory; checking the file by polling until it can",
			zap.String("file", w.path), zap.Duration("every", w.poll), zap.Error(failed))
	case !polling && w.polling:
		w.log.Info("watching the config file again", zap.String("file", w.path))
	}
	w.polling = failed != nil
	return entries, added
}

// entry is a directory entry that decides what a path reads: a symlink met
// resolving it, or the file it resolves to. dir is a real path, free of
// symlinks.
type entry struct{ dir, name string }

// maxLinks bounds the symlinks followed resolving a path, as the kernel
// does (ELOOP).
const maxLinks = 40

// resolve follows path, an absolute one, component by component as the
// kernel does, and returns every symlink met and the file reached, each by
// its real directory. complete is false when a directory on the way does
// not exist (its entry, in its parent, is then the last one) or there are
// too many links; a file that does not exist is still complete, as its
// directory is watched for it.
func resolve(path string) (entries []entry, complete bool) {
	dir := string(filepath.Separator)
	rest := splitPath(path)
	links := 0
	for len(rest) > 0 {
		name := rest[0]
		rest = rest[1:]
		switch name {
		case "", ".":
			continue
		case "..":
			dir = filepath.Dir(dir)
			continue
		}
		next := filepath.Join(dir, name)
		fi, err := os.Lstat(next)
		if err != nil {
			entries = append(entries, entry{dir, name})
			return entries, len(rest) == 0
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			dir = next
			continue
		}
		entries = append(entries, entry{dir, name})
		target, err := os.Readlink(next)
		if links++; err != nil || links > maxLinks {
			return entries, false
		}
		if filepath.IsAbs(target) {
			dir = string(filepath.Separator)
		}
		rest = append(splitPath(target), rest...)
	}
	// The path ended on a directory or on the last link's target: the
	// file is dir itself.
	return append(entries, entry{filepath.Dir(dir), filepath.Base(dir)}), true
}

func splitPath(p string) []string {
	return strings.Split(filepath.ToSlash(p), "/")
}

// fileState is what a poll compares: whether the file exists, which file
// it is and its size and time of change.
type fileState struct {
	fi os.FileInfo // nil when the file cannot be read
}

func stateOf(path string) fileState {
	fi, err := os.Stat(path)
	if err != nil {
		return fileState{}
	}
	return fileState{fi}
}

// same reports whether s and o are the same version of the same file.
func (s fileState) same(o fileState) bool {
	if s.fi == nil || o.fi == nil {
		return s.fi == nil && o.fi == nil
	}
	return os.SameFile(s.fi, o.fi) && s.fi.Size() == o.fi.Size() && s.fi.ModTime().Equal(o.fi.ModTime())
}
