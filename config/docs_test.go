package config

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestDocumentedKeys keeps docs/configuration.md and the loader in step:
// every key the loader accepts is named in the reference's tables, and every
// key the tables name is one the loader accepts. Keys are compared by name
// (the segments of `health_check.path` or `backends[].url`), which is what a
// renamed, added or removed key changes.
func TestDocumentedKeys(t *testing.T) {
	code := loaderKeys(t)
	docs := documentedKeys(t, "../docs/configuration.md")
	for _, k := range sortedKeys(code) {
		if !docs[k] {
			t.Errorf("config key %q is accepted by the loader (%s) but not in docs/configuration.md", k, code[k])
		}
	}
	for _, k := range sortedKeys(docs) {
		if _, ok := code[k]; !ok {
			t.Errorf("docs/configuration.md names key %q, which the loader does not accept", k)
		}
	}
}

// loaderKeys returns the key names the loader's sections accept: the string
// arguments of its section and sub calls, each with the file and line of the
// call.
func loaderKeys(t *testing.T) map[string]string {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]string{}
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(file, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || (sel.Sel.Name != "section" && sel.Sel.Name != "sub") {
				return true
			}
			first := 1 // sub(s, key, known...): the key and its known keys
			if sel.Sel.Name == "section" {
				first = 3 // section(n, at, path, known...)
			}
			for _, a := range call.Args[min(first, len(call.Args)):] {
				lit, ok := a.(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					continue
				}
				k, err := strconv.Unquote(lit.Value)
				if err != nil {
					t.Fatal(err)
				}
				keys[k] = fset.Position(lit.Pos()).String()
			}
			return true
		})
	}
	if len(keys) < 20 {
		t.Fatalf("found %d keys in the loader; the way sections are declared has changed", len(keys))
	}
	return keys
}

// documentedKeys returns the key names in the first column of the tables of
// the markdown file whose header's first cell is "key".
func documentedKeys(t *testing.T, path string) map[string]bool {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tick := regexp.MustCompile("`([^`]+)`")
	keys := map[string]bool{}
	inTable := false
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(line, "|") {
			inTable = false
			continue
		}
		cells := strings.Split(line, "|")
		first := strings.TrimSpace(cells[1])
		if first == "key" {
			inTable = true
			continue
		}
		if !inTable || strings.HasPrefix(first, "---") {
			continue
		}
		m := tick.FindStringSubmatch(first)
		if m == nil {
			t.Errorf("%s: table row without a key: %s", path, line)
			continue
		}
		for _, seg := range strings.Split(m[1], ".") {
			keys[strings.TrimSuffix(seg, "[]")] = true
		}
	}
	return keys
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}
