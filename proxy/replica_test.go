package proxy

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/affinityproxy/affinity/internal/testutil"
)

// binDir holds the affinity binary built for the tests that run replicas;
// TestMain removes it.
var binDir string

// buildOnce builds the affinity command once for every test of the package.
var buildOnce = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "affinity-bin-")
	if err != nil {
		return "", err
	}
	binDir = dir
	bin := filepath.Join(dir, "affinity")
	cmd := exec.Command("go", "build", "-pgo=off", "-o", bin, "./cmd/affinity")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %w\n%s", err, out)
	}
	return bin, nil
})

// buildAffinity returns the affinity binary, built on first use; it skips
// the test under -short.
func buildAffinity(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the affinity binary and runs replicas of the proxy")
	}
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// replica is an `affinity serve` process.
type replica struct {
	url string
	cmd *exec.Cmd
	out *testutil.LockedBuffer
}

// startReplica runs bin serve with config, until the test ends: then it
// must stop on SIGTERM with status 0.
func startReplica(t *testing.T, bin, config string) *replica {
	t.Helper()
	listen := testutil.FreeAddr(t)
	path := filepath.Join(t.TempDir(), "affinity.yaml")
	if err := os.WriteFile(path, []byte("listen: "+listen+"\n"+config), 0o600); err != nil {
		t.Fatal(err)
	}
	r := &replica{url: "http://" + listen, cmd: exec.Command(bin, "serve", "-c", path), out: new(testutil.LockedBuffer)}
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- r.cmd.Wait() }()
	t.Cleanup(func() {
		if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Errorf("SIGTERM: %v", err)
		}
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("replica %s exited with %v; output:\n%s", r.url, err, r.out)
			}
		case <-time.After(waitFor):
			_ = r.cmd.Process.Kill()
			<-exited
			t.Errorf("replica %s still running %v after SIGTERM; output:\n%s", r.url, waitFor, r.out)
		}
	})
	testutil.WaitReady(t, listen, waitFor)
	return r
}
