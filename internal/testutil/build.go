package testutil

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// buildDir holds the affinity binary that AffinityBinary built, until
// RemoveAffinityBinary.
var buildDir string

// buildAffinity builds cmd/affinity once per test binary.
var buildAffinity = sync.OnceValues(func() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("go env GOMOD = %q, %v: want the module's go.mod", gomod, err)
	}
	if buildDir, err = os.MkdirTemp("", "affinity-test-bin-"); err != nil {
		return "", err
	}
	bin := filepath.Join(buildDir, "affinity")
	// -pgo=off: the tests do not need a profile-guided build, which
	// recompiles every package.
	build := exec.CommandContext(ctx, "go", "build", "-pgo=off", "-o", bin, "./cmd/affinity")
	build.Dir = filepath.Dir(gomod)
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/affinity: %w\n%s", err, out)
	}
	return bin, nil
})

// AffinityBinary returns the affinity binary, built from this checkout once
// for all the tests of the package, for tests that run it as real
// processes. It skips t under -short. The package's TestMain removes it
// with RemoveAffinityBinary.
func AffinityBinary(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the affinity binary and runs real processes; skipped under -short")
	}
	bin, err := buildAffinity()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// RemoveAffinityBinary removes the binary AffinityBinary built, if any.
func RemoveAffinityBinary() {
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
}
