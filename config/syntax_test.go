package config

import (
	"errors"
	"strings"
	"testing"
)

// TestPositions: every problem is reported where an editor shows it,
// whatever the line endings, and a syntax error at the character the parser
// stopped at, with the collection it was in.
func TestPositions(t *testing.T) {
	const backends = "    backends: [{url: \"http://127.0.0.1:9001\"}]\n"
	tests := []struct {
		name string
		data string
		want string // the first problem, without the file name
	}{
		{"bad indentation in a nested mapping",
			"listen: 127.0.0.1:8080\npools:\n  web:\n    backends:\n      - url: http://127.0.0.1:9001\n     weight: 2\n",
			"6:6: invalid YAML: did not find expected key (in the mapping at 4:5)"},
		{"a key less indented than its siblings",
			"listen: 127.0.0.1:8080\npools:\n  web:\n    retries: 1\n   backends: []\n",
			"5:4: invalid YAML: did not find expected key (in the mapping at 3:3)"},
		{"a key among list items",
			"listen: 127.0.0.1:8080\npools:\n  web:\n    backends:\n      - url: http://127.0.0.1:9001\n      - url: http://127.0.0.1:9002\n      retries: 2\n",
			"7:7: invalid YAML: did not find expected '-' indicator (in the list at 5:7)"},
		{"a flow list left open",
			"listen: 127.0.0.1:8080\npools:\n  web:\n    backends: [{url: \"http://127.0.0.1:9001\"}\n    retries: 2\n",
			"5:5: invalid YAML: did not find expected ',' or ']' (in the list at 4:15)"},
		{"a flow mapping left open",
			"listen: 127.0.0.1:8080\nlog: {level: info, format: json\npools:\n  web:\n" + backends,
			"3:1: invalid YAML: did not find expected ',' or '}' (in the mapping at 2:6)"},
		{"a value where none may stand",
			"listen: 127.0.0.1:8080\nlog: level: info\n",
			"2:6: invalid YAML: mapping values are not allowed in this context"},
		{"a quoted scalar never closed ends at the last line",
			"listen: \"127.0.0.1:8080\npools: {}\n\n\n",
			"2:9: invalid YAML: found unexpected end of stream"},
		{"an error in a second document",
			"listen: 127.0.0.1:8080\npools:\n  web:\n" + backends + "---\na:\n  b: 1\n c: 2\n",
			"8:2: invalid YAML: did not find expected key (in the mapping at 6:1)"},
		{"lone CR line endings, a bad character",
			"listen: 127.0.0.1:8080\rpools:\r  web:\r    backends: []\r    retries: \x01\r",
			"5:14: character U+0001 is not allowed in YAML"},
		{"lone CR line endings, bad indentation",
			"listen: 127.0.0.1:8080\rpools:\r  web:\r    retries: 1\r   backends: []\r",
			"5:4: invalid YAML: did not find expected key (in the mapping at 3:3)"},
		{"lone CR line endings, a schema error",
			"listen: 127.0.0.1:8080\rpools:\r  web:\r    retries: many\r" + strings.ReplaceAll(backends, "\n", "\r"),
			"4:14: pools.web.retries: expected an integer, got \"many\""},
		{"CRLF line endings, bad indentation",
			"listen: 127.0.0.1:8080\r\npools:\r\n  web:\r\n    retries: 1\r\n   backends: []\r\n",
			"5:4: invalid YAML: did not find expected key (in the mapping at 3:3)"},
		{"U+0085 inside a line",
			"listen: 127.0.0.1:8080\npools:\n  web:\n    retries: \"a\u0085b\"\n" + backends,
			`4:16: character U+0085 (next line) is not allowed: YAML parsers disagree on whether it ends a line; remove it, or write it as \u0085 in a double-quoted string`},
		{"U+2028 inside a line",
			"listen: 127.0.0.1:8080 # é\u2028\npools: x\n",
			`1:27: character U+2028 (line separator) is not allowed: YAML parsers disagree on whether it ends a line; remove it, or write it as \u2028 in a double-quoted string`},
		{"U+2029 after a lone CR",
			"listen: 127.0.0.1:8080\r\u2029pools: x\n",
			`2:1: character U+2029 (paragraph separator) is not allowed: YAML parsers disagree on whether it ends a line; remove it, or write it as \u2029 in a double-quoted string`},
		{"an unknown alias",
			"listen: 127.0.0.1:8080\npools:\n  web: *pool\n",
			"3:8: invalid YAML: unknown anchor 'pool' referenced"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("a.yaml", []byte(tt.data))
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("Parse error = %v, want an ErrorList", err)
			}
			if got := strings.TrimPrefix(list[0].Error(), "a.yaml:"); got != tt.want {
				t.Errorf("first problem\n%s\nwant\n%s", got, tt.want)
			}
			if lines := lastLine([]byte(tt.data)); list[0].Line > lines {
				t.Errorf("line %d is past the end of the file (%d lines)", list[0].Line, lines)
			}
		})
	}
}

func TestClosers(t *testing.T) {
	tests := map[string]string{
		"a: [1, {b: [":                "]}]",
		"a: [1, {b: 2}, 3":            "]",
		"a: \"[{\" ['x[', {c: 'it''s": "}]",
		"path: /a[1] # [{\nb: [":      "]",
		"a: [1] # ]\n{":               "}",
	}
	for in, want := range tests {
		if got := string(closers([]byte(in))); got != want {
			t.Errorf("closers(%q) = %q, want %q", in, got, want)
		}
	}
}
