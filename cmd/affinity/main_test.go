package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(int) {
		if binary.dir != "" {
			_ = os.RemoveAll(binary.dir)
		}
	}))
}

// syncBuffer is a bytes.Buffer safe to write from a running command while
// the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// run executes the command line in-process and returns its exit code and
// output.
func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errw bytes.Buffer
	code = execute(context.Background(), args, &out, &errw)
	return code, out.String(), errw.String()
}

// writeFile writes a file in a fresh temporary directory and returns its path.
func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestVersion(t *testing.T) {
	code, out, errOut := run(t, "version")
	if code != exitOK || errOut != "" {
		t.Fatalf("exit %d, stderr %q; want 0 and nothing", code, errOut)
	}
	if want := "affinity " + versionString() + " "; !strings.HasPrefix(out, want) {
		t.Errorf("stdout %q, want prefix %q", out, want)
	}
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string // in stderr
	}{
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"unknown flag", []string{"validate", "--nope"}, "unknown flag: --nope"},
		{"extra argument", []string{"validate", "x.yaml"}, `unknown command "x.yaml"`},
		{"bad log level", []string{"serve", "--log-level", "loud"}, `"loud": want debug, info, warn or error`},
		{"flag without value", []string{"validate", "--config"}, "flag needs an argument"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := run(t, tc.args...)
			if code != exitUsage {
				t.Errorf("exit %d, want %d", code, exitUsage)
			}
			if !strings.Contains(errOut, tc.want) || !strings.Contains(errOut, "--help' for usage") {
				t.Errorf("stderr %q, want %q and a pointer to --help", errOut, tc.want)
			}
			if out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
		})
	}
}

func TestHelpIsNotAnError(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"serve", "--help"}, {"validate", "-h"}, {}} {
		code, out, _ := run(t, args...)
		if code != exitOK || !strings.Contains(out, "Usage:") {
			t.Errorf("%q: exit %d, stdout %q; want 0 and usage", args, code, out)
		}
	}
}

// positioned is one line of validate's error output.
var positioned = regexp.MustCompile(`^(.+):(\d+):(\d+): \S.*$`)

func TestValidate(t *testing.T) {
	valid := "../../examples/routes.yaml"
	invalid := writeFile(t, "bad.yaml", []byte(`listen: 127.0.0.1:8080
pools:
  web:
    balancer:
      type: sticky-ish
    backends:
      - url: http://127.0.0.1:9001
        weight: 0
`))
	big := bytes.Repeat([]byte("k: v\n"), 2<<20) // 10 MiB of one key repeated
	tests := []struct {
		name string
		file string
		code int
		// out is the exact stdout; lines are the line numbers every one of
		// which must have an error on stderr (nil: any position).
		out   string
		lines []int
	}{
		{name: "valid", file: valid, code: exitOK, out: valid + ": ok: 2 routes, 2 pools, 5 backends\n"},
		{name: "every error", file: invalid, code: exitFailure, lines: []int{5, 8}},
		{name: "empty", file: writeFile(t, "empty.yaml", nil), code: exitFailure},
		{name: "garbage", file: writeFile(t, "garbage.yaml", []byte("\x00\xff\x1b[31m{{{:\n\t- ]]]\x7f")), code: exitFailure},
		{name: "top-level list", file: writeFile(t, "list.yaml", []byte("- listen: 127.0.0.1:8080\n- pools: {}\n")), code: exitFailure},
		{name: "scalar", file: writeFile(t, "scalar.yaml", []byte("just a string\n")), code: exitFailure},
		{name: "10 MiB", file: writeFile(t, "big.yaml", big), code: exitFailure},
		{name: "missing", file: filepath.Join(t.TempDir(), "missing.yaml"), code: exitFailure},
		{name: "directory", file: t.TempDir(), code: exitFailure},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := run(t, "validate", "--config", tc.file)
			if code != tc.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, tc.code, errOut)
			}
			if out != tc.out {
				t.Errorf("stdout %q, want %q", out, tc.out)
			}
			for _, bad := range []string{"panic", "goroutine", "Usage:"} {
				if strings.Contains(errOut, bad) {
					t.Errorf("stderr has %q:\n%s", bad, errOut)
				}
			}
			if tc.code == exitOK {
				return
			}
			if !strings.HasPrefix(errOut, tc.file+":") || !strings.HasSuffix(errOut, "\n") {
				t.Errorf("stderr %q, want lines starting with the file name", errOut)
			}
			if tc.lines == nil {
				return
			}
			found := map[string]bool{}
			for _, l := range strings.Split(strings.TrimSuffix(errOut, "\n"), "\n") {
				m := positioned.FindStringSubmatch(l)
				if m == nil || m[1] != tc.file {
					t.Errorf("error line %q, want %s:LINE:COL: message", l, tc.file)
					continue
				}
				found[m[2]] = true
			}
			for _, n := range tc.lines {
				if !found[fmt.Sprint(n)] {
					t.Errorf("no error at line %d in:\n%s", n, errOut)
				}
			}
		})
	}
}

// TestValidateEveryConfig runs validate over every config of the
// repository, from its root as a user would: each example a user may copy,
// and each valid test config, passes; each invalid test config fails with
// exactly the errors of its golden file; and the secure example, whose
// certificate paths are placeholders, fails on those files alone, at their
// keys.
func TestValidateEveryConfig(t *testing.T) {
	t.Chdir(filepath.Join("..", ".."))
	var valid []string
	for _, pattern := range []string{"examples/*.yaml", "examples/*/*.yaml", "testdata/config/valid/*.yaml"} {
		files, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		valid = append(valid, files...)
	}
	placeholders := map[string][]string{
		"examples/secure.yaml": {
			"examples/secure.yaml:8:9: tls.cert: open /etc/affinity/tls/cert.pem: no such file or directory",
			"examples/secure.yaml:9:8: tls.key: open /etc/affinity/tls/key.pem: no such file or directory",
			"examples/secure.yaml:34:11: pools.web.tls.ca: open /etc/affinity/tls/backend-ca.pem: no such file or directory",
		},
	}
	if len(valid) < 15 {
		t.Fatalf("found %d configs, want at least 15: %v", len(valid), valid)
	}
	for _, f := range valid {
		t.Run(f, func(t *testing.T) {
			code, out, errOut := run(t, "validate", "-c", f)
			if want, ok := placeholders[f]; ok {
				if code != exitFailure || out != "" || errOut != strings.Join(want, "\n")+"\n" {
					t.Errorf("exit %d, stdout %q, stderr:\n%s\nwant 1 and:\n%s", code, out, errOut, strings.Join(want, "\n"))
				}
				return
			}
			if code != exitOK || !strings.HasPrefix(out, f+": ok: ") || errOut != "" {
				t.Errorf("exit %d, stdout %q, stderr:\n%s", code, out, errOut)
			}
		})
	}
	t.Chdir("testdata")
	invalid, err := filepath.Glob("config/invalid/*.yaml")
	if err != nil || len(invalid) < 30 {
		t.Fatalf("found %d invalid configs (%v), want at least 30", len(invalid), err)
	}
	for _, f := range invalid {
		t.Run(f, func(t *testing.T) {
			want, err := os.ReadFile(strings.TrimSuffix(f, ".yaml") + ".err")
			if err != nil {
				t.Fatal(err)
			}
			code, out, errOut := run(t, "validate", "-c", f)
			// The command registers the experiments' balancer too, which
			// the config package's tests, and so the golden files, do not.
			errOut = strings.ReplaceAll(errOut, "modulo-hash, ", "")
			if code != exitFailure || out != "" || errOut != string(want) {
				t.Errorf("exit %d, stdout %q, stderr:\n%s\nwant 1 and:\n%s", code, out, errOut, want)
			}
		})
	}
}

// TestValidateWarnsExposedAdmin: validate says what serve would meet with
// an admin listener on every interface and no token: writes refused.
func TestValidateWarnsExposedAdmin(t *testing.T) {
	file := writeFile(t, "exposed.yaml", []byte("listen: 127.0.0.1:8080\nadmin: {listen: \"0.0.0.0:9090\"}\n"+
		"pools:\n  web:\n    backends: [{url: \"http://127.0.0.1:9001\"}]\n"))
	code, out, errOut := run(t, "validate", "-c", file)
	want := file + ":2:17: warning: admin.listen: 0.0.0.0:9090 is reachable from other hosts and no admin.token or admin.token_file is set: the runtime API will refuse every write"
	if code != exitOK || out != file+": ok: 1 route, 1 pool, 1 backend\n" || !strings.HasPrefix(errOut, want) {
		t.Errorf("exit %d, stdout %q, stderr %q; want 0, ok, and a warning starting %q", code, out, errOut, want)
	}
}
