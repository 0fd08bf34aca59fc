package watch

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// quiet is the quiet period of the tests' watchers.
const quiet = 50 * time.Millisecond

// waitFor bounds every wait for a change that must be reported.
const waitFor = 5 * time.Second

func write(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// watch starts a Watcher of path with the given quiet period, closed when
// the test ends.
func watch(t *testing.T, path string, quiet time.Duration) *Watcher {
	t.Helper()
	w, err := New(path, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := w.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return w
}

// expectChange fails t unless w reports a change within waitFor.
func expectChange(t *testing.T, w *Watcher, what string) {
	t.Helper()
	select {
	case <-w.C:
	case <-time.After(waitFor):
		t.Fatalf("%s: no change reported within %v", what, waitFor)
	}
}

// expectQuiet fails t if w reports a change within a few quiet periods:
// long enough for a change that was going to be reported to be.
func expectQuiet(t *testing.T, w *Watcher, quiet time.Duration, what string) {
	t.Helper()
	select {
	case <-w.C:
		t.Fatalf("%s: a change was reported", what)
	case <-time.After(5 * quiet):
	}
}

func TestChanges(t *testing.T) {
	tests := []struct {
		name   string
		change func(t *testing.T, dir, path string)
	}{
		{"written in place", func(t *testing.T, _, path string) { write(t, path, "b") }},
		{"renamed over", func(t *testing.T, dir, path string) {
			tmp := filepath.Join(dir, ".a.yaml.swp")
			write(t, tmp, "b")
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		}},
		{"removed and created again", func(t *testing.T, _, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			write(t, path, "b")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "a.yaml")
			write(t, path, "a")
			w := watch(t, path, quiet)
			tt.change(t, dir, path)
			expectChange(t, w, tt.name)
			// The watch goes on after a file was replaced.
			write(t, path, "c")
			expectChange(t, w, "a write after "+tt.name)
		})
	}
}

// TestBurstIsOneChange: many writes in a row are one change, reported once
// they stop.
func TestBurstIsOneChange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.yaml")
	write(t, path, "")
	// A long quiet period, so that a slow machine still writes the burst
	// within it.
	const burstQuiet = 300 * time.Millisecond
	w := watch(t, path, burstQuiet)
	for i := range 20 {
		write(t, path, string(rune('a'+i)))
	}
	expectChange(t, w, "a burst of writes")
	expectQuiet(t, w, burstQuiet, "after the burst was reported")
}

func TestOtherFilesIgnored(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.yaml")
	write(t, path, "a")
	w := watch(t, path, quiet)
	write(t, filepath.Join(dir, "other.yaml"), "x")
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	expectQuiet(t, w, quiet, "another file written and the file's mode changed")
}

// TestSymlinkSwap follows a Kubernetes ConfigMap update: the file is a
// symlink through ..data, and an update points ..data at a new directory.
func TestSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	for _, v := range []string{"v1", "v2"} {
		if err := os.Mkdir(filepath.Join(dir, v), 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, v, "a.yaml"), v)
	}
	link := func(target, name string) {
		t.Helper()
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	link("v1", "..data")
	link(filepath.Join("..data", "a.yaml"), "a.yaml")
	w := watch(t, filepath.Join(dir, "a.yaml"), quiet)
	link("v2", "..data_tmp")
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	expectChange(t, w, "..data swapped")
	if b, err := os.ReadFile(filepath.Join(dir, "a.yaml")); err != nil || string(b) != "v2" {
		t.Fatalf("a.yaml reads %q, %v after the swap; the test did not swap it", b, err)
	}
}

func TestFilterMatch(t *testing.T) {
	tests := []struct {
		f    filter
		ev   fsnotify.Event
		want bool
	}{
		{filter{name: "a.yaml"}, fsnotify.Event{Name: "d/a.yaml", Op: fsnotify.Write}, true},
		{filter{name: "a.yaml"}, fsnotify.Event{Name: "d/a.yaml", Op: fsnotify.Create}, true},
		{filter{name: "a.yaml"}, fsnotify.Event{Name: "d/a.yaml", Op: fsnotify.Rename}, true},
		{filter{name: "a.yaml"}, fsnotify.Event{Name: "d/a.yaml", Op: fsnotify.Remove}, true},
		{filter{name: "a.yaml"}, fsnotify.Event{Name: "d/a.yaml", Op: fsnotify.Chmod}, false},
		{filter{name: "a.yaml"}, fsnotify.Event{Name: "d/a.yaml", Op: fsnotify.Write | fsnotify.Chmod}, true},
		{filter{name: "a.yaml"}, fsnotify.Event{Name: "d/a.yaml~", Op: fsnotify.Write}, false},
		{filter{name: "a.yaml"}, fsnotify.Event{Name: "d/..data", Op: fsnotify.Create}, false},
		{filter{name: "a.yaml", anyName: true}, fsnotify.Event{Name: "d/..data", Op: fsnotify.Create}, true},
		{filter{name: "a.yaml", anyName: true}, fsnotify.Event{Name: "d/..data", Op: fsnotify.Chmod}, false},
	}
	for _, tt := range tests {
		if got := tt.f.match(tt.ev); got != tt.want {
			t.Errorf("%+v.match(%v) = %v, want %v", tt.f, tt.ev, got, tt.want)
		}
	}
}

func TestNewErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name  string
		path  string
		quiet time.Duration
	}{
		{"directory missing", filepath.Join(dir, "missing", "a.yaml"), quiet},
		{"no quiet period", filepath.Join(dir, "a.yaml"), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, err := New(tt.path, tt.quiet)
			if err == nil {
				_ = w.Close()
				t.Fatal("New succeeded")
			}
		})
	}
}

func TestCloseTwice(t *testing.T) {
	w, err := New(filepath.Join(t.TempDir(), "a.yaml"), quiet)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}
