package testutil

import (
	"bufio"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// HostileResponse is one of testdata/hostile-responses.txt: a backend
// response a client must refuse, or read exactly as http.ReadResponse does.
type HostileResponse struct{ Name, Raw string }

// HostileResponses reads testdata/hostile-responses.txt at the module's
// root: a name and a Go quoted response a line, # for comments. The
// internal/h1 fuzz targets take each as a seed, and proxy's tests send each
// through the proxy.
func HostileResponses(tb testing.TB) []HostileResponse {
	tb.Helper()
	_, here, _, _ := runtime.Caller(0)
	name := filepath.Join(filepath.Dir(here), "..", "..", "testdata", "hostile-responses.txt")
	f, err := os.Open(name)
	if err != nil {
		tb.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	var out []HostileResponse
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, quoted, ok := strings.Cut(line, " ")
		raw, err := strconv.Unquote(quoted)
		if !ok || err != nil {
			tb.Fatalf("testdata/hostile-responses.txt:%d: want a name and a quoted response", n)
		}
		out = append(out, HostileResponse{name, raw})
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	return out
}
