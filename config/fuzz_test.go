package config

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse checks that no input makes Parse panic, and that it returns
// either a config or a non-empty ErrorList of well-formed entries, none past
// the end of the file.
func FuzzParse(f *testing.F) {
	for _, dir := range []string{"valid", "invalid"} {
		files, err := filepath.Glob(filepath.Join(testdata, "config", dir, "*.yaml"))
		if err != nil {
			f.Fatal(err)
		}
		for _, path := range files {
			data, err := os.ReadFile(path)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.yaml", data)
		if (c == nil) == (err == nil) {
			t.Fatalf("Parse = %v, %v; want exactly one of a config and an error", c, err)
		}
		if err == nil {
			return
		}
		var list ErrorList
		if !errors.As(err, &list) || len(list) == 0 {
			t.Fatalf("Parse error = %v (%T), want a non-empty ErrorList", err, err)
		}
		lines := lastLine(data)
		for _, e := range list {
			if e.File != "fuzz.yaml" || e.Line < 0 || e.Col < 0 || (e.Line > 0) != (e.Col > 0) || e.Msg == "" {
				t.Errorf("malformed entry %#v", e)
			}
			if e.Line > lines {
				t.Errorf("entry %#v is past the last line, %d", e, lines)
			}
		}
	})
}
