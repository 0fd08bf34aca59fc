package watch

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/affinityproxy/affinity/internal/testutil"
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
	w, err := New(path, quiet, nil)
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

// link makes name a symlink to target, or replaces it atomically as deploy
// tools do: a new link renamed over the old one.
func link(t *testing.T, target, name string) {
	t.Helper()
	tmp := name + ".tmp"
	if err := os.Symlink(target, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, name); err != nil {
		t.Fatal(err)
	}
}

func mkdir(t *testing.T, path string) {
	t.Helper()
	if err := os.MkdirAll(path, 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestSymlinkToFileElsewhere: the path is a symlink to a file in another
// directory, whose edits are changes; other files there are not.
func TestSymlinkToFileElsewhere(t *testing.T) {
	root := t.TempDir()
	mkdir(t, filepath.Join(root, "etc"))
	mkdir(t, filepath.Join(root, "srv"))
	target := filepath.Join(root, "srv", "real.yaml")
	write(t, target, "a")
	path := filepath.Join(root, "etc", "a.yaml")
	link(t, filepath.Join("..", "srv", "real.yaml"), path)
	w := watch(t, path, quiet)
	write(t, target, "b")
	expectChange(t, w, "the target written")
	write(t, filepath.Join(root, "srv", "other.yaml"), "x")
	expectQuiet(t, w, quiet, "another file beside the target written")
	tmp := filepath.Join(root, "srv", ".real.yaml.swp")
	write(t, tmp, "c")
	if err := os.Rename(tmp, target); err != nil {
		t.Fatal(err)
	}
	expectChange(t, w, "the target renamed over")
	write(t, target, "d")
	expectChange(t, w, "the new target written")
}

// TestDirectorySymlinkSwap: the path's directory is a symlink that a deploy
// points at a new release. The swap is a change, then edits of the new
// release's file are, and those of the old one are not.
func TestDirectorySymlinkSwap(t *testing.T) {
	root := t.TempDir()
	for _, r := range []string{"release-1", "release-2"} {
		mkdir(t, filepath.Join(root, r))
		write(t, filepath.Join(root, r, "a.yaml"), r)
	}
	current := filepath.Join(root, "current")
	link(t, "release-1", current)
	w := watch(t, filepath.Join(current, "a.yaml"), quiet)
	link(t, "release-2", current)
	expectChange(t, w, "current swapped to release-2")
	write(t, filepath.Join(root, "release-2", "a.yaml"), "edited")
	expectChange(t, w, "the new release's file written")
	write(t, filepath.Join(root, "release-1", "a.yaml"), "edited")
	expectQuiet(t, w, quiet, "the old release's file written")
	link(t, "release-1", current)
	expectChange(t, w, "current swapped back")
	write(t, filepath.Join(root, "release-1", "a.yaml"), "edited again")
	expectChange(t, w, "release-1's file written again")
}

// TestDirectoryRecreated: the file's directory is removed and created
// again, more than once; every edit after it is seen, and each loss and
// return of the directory is logged.
func TestDirectoryRecreated(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "conf")
	mkdir(t, dir)
	path := filepath.Join(dir, "a.yaml")
	write(t, path, "a")
	core, logs := observer.New(zapcore.InfoLevel)
	w, err := New(path, quiet, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	// logged waits until the lines with snippet number n. On a loaded
	// machine one write's events may straddle a quiet period and be
	// reported twice, and expectChange then takes the spare report for
	// the removal before the watch has seen the directory go: waiting
	// for the line itself keeps the directory away until it has.
	logged := func(round int, snippet, what string) {
		t.Helper()
		testutil.Eventually(t, waitFor, fmt.Sprintf("round %d: a line telling the directory %s", round, what), func() bool {
			return logs.FilterMessageSnippet(snippet).Len() >= round+1
		})
		if n := logs.FilterMessageSnippet(snippet).Len(); n != round+1 {
			t.Errorf("round %d: %d lines telling the directory %s, want %d", round, n, what, round+1)
		}
	}
	for round := range 3 {
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		expectChange(t, w, "the directory removed")
		logged(round, "is gone", "is gone")
		mkdir(t, dir)
		write(t, path, "created")
		expectChange(t, w, "the directory and file created again")
		logged(round, "is back", "is back")
		for i := range 2 {
			write(t, path, string(rune('a'+i)))
			expectChange(t, w, "a write after the directory came back")
		}
	}
}

// TestDirectorySwapped: a deploy swaps the config's whole directory by two
// renames in a row (the old one aside, the new one into its place), too
// quick for the watch to see the path missing in between. Writes to the
// new directory are changes, and writes to the old one, wherever it went,
// are not.
func TestDirectorySwapped(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "conf")
	mkdir(t, dir)
	path := filepath.Join(dir, "a.yaml")
	write(t, path, "a")
	w := watch(t, path, quiet)
	for round := range 3 {
		next, old := filepath.Join(root, "conf.new"), filepath.Join(root, fmt.Sprintf("conf.old%d", round))
		mkdir(t, next)
		write(t, filepath.Join(next, "a.yaml"), "swapped")
		if err := os.Rename(dir, old); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(next, dir); err != nil {
			t.Fatal(err)
		}
		expectChange(t, w, "the directory swapped")
		for i := range 2 {
			write(t, path, string(rune('a'+i)))
			expectChange(t, w, fmt.Sprintf("round %d: write %d in the swapped-in directory", round, i))
		}
		write(t, filepath.Join(old, "a.yaml"), "old")
		expectQuiet(t, w, quiet, "a write in the swapped-out directory")
	}
}

// TestMissingDirectory: a path whose directory does not exist yet is
// watched for it.
func TestMissingDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	path := filepath.Join(dir, "a.yaml")
	w := watch(t, path, quiet)
	mkdir(t, dir)
	write(t, path, "a")
	expectChange(t, w, "the directories and the file created")
	write(t, path, "b")
	expectChange(t, w, "the file written")
}

// TestPolling: where inotify cannot be had, the file is checked every poll
// period, and its changes are still reported, once each.
func TestPolling(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.yaml")
	write(t, path, "a")
	core, logs := observer.New(zapcore.InfoLevel)
	noInotify := func() (*fsnotify.Watcher, error) { return nil, errors.New("too many open files") }
	w, err := newWatcher(path, quiet, 10*time.Millisecond, zap.New(core), noInotify)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if logs.FilterMessageSnippet("by polling").Len() != 1 {
		t.Errorf("logs %v, want one line telling of polling", logs.All())
	}
	write(t, path, "bb")
	expectChange(t, w, "written in place")
	expectQuiet(t, w, quiet, "nothing more")
	tmp := filepath.Join(dir, ".a.yaml.swp")
	write(t, tmp, "bb")
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	expectChange(t, w, "renamed over, same size")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	expectChange(t, w, "removed")
}

func TestResolve(t *testing.T) {
	root := t.TempDir()
	real, err := filepath.EvalSymlinks(root)
	if err != nil {
		t.Fatal(err)
	}
	mkdir(t, filepath.Join(root, "v1"))
	write(t, filepath.Join(root, "v1", "a.yaml"), "a")
	link(t, "v1", filepath.Join(root, "..data"))
	link(t, filepath.Join("..data", "a.yaml"), filepath.Join(root, "a.yaml"))
	link(t, "loop-b", filepath.Join(root, "loop-a"))
	link(t, "loop-a", filepath.Join(root, "loop-b"))
	tests := []struct {
		path     string
		want     []entry
		complete bool
	}{
		{"v1/a.yaml", []entry{{real + "/v1", "a.yaml"}}, true},
		{"v1/missing.yaml", []entry{{real + "/v1", "missing.yaml"}}, true},
		{"a.yaml", []entry{{real, "a.yaml"}, {real, "..data"}, {real + "/v1", "a.yaml"}}, true},
		{"..data/a.yaml", []entry{{real, "..data"}, {real + "/v1", "a.yaml"}}, true},
		{"gone/deeper/a.yaml", []entry{{real, "gone"}}, false},
		{"v1/../v1/a.yaml", []entry{{real + "/v1", "a.yaml"}}, true},
	}
	for _, tt := range tests {
		got, complete := resolve(filepath.Join(real, tt.path))
		if !reflect.DeepEqual(got, tt.want) || complete != tt.complete {
			t.Errorf("resolve(%s) = %v, %v; want %v, %v", tt.path, got, complete, tt.want, tt.complete)
		}
	}
	if _, complete := resolve(filepath.Join(real, "loop-a", "a.yaml")); complete {
		t.Error("a symlink loop resolved")
	}
}

func TestNewErrors(t *testing.T) {
	w, err := New(filepath.Join(t.TempDir(), "a.yaml"), 0, nil)
	if err == nil {
		_ = w.Close()
		t.Fatal("New succeeded without a quiet period")
	}
}

func TestCloseTwice(t *testing.T) {
	w, err := New(filepath.Join(t.TempDir(), "a.yaml"), quiet, nil)
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
