package h1

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
)

// hostileResponse is one of testdata/hostile-responses.txt.
type hostileResponse struct{ name, raw string }

// hostileResponses reads testdata/hostile-responses.txt: a name and a Go
// quoted response a line, # for comments.
func hostileResponses(tb testing.TB) []hostileResponse {
	tb.Helper()
	f, err := os.Open("testdata/hostile-responses.txt")
	if err != nil {
		tb.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	var out []hostileResponse
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
		out = append(out, hostileResponse{name, raw})
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	return out
}
