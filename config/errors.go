package config

import (
	"bytes"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// Error is one problem in a config file, at the position of the node at
// fault.
type Error struct {
	File string
	// Line and Col are 1-based. Line is 0 for a problem with the file as a
	// whole (such as its size). Col is 1 when the YAML parser reports a
	// syntax error by line only.
	Line, Col int
	Msg       string
}

// Error renders the problem as FILE:LINE:COL: message, the form editors and
// terminals turn into a link to the position.
func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteByte(':')
	}
	if e.Line > 0 {
		fmt.Fprintf(&b, "%d:%d:", e.Line, e.Col)
	}
	if b.Len() > 0 {
		b.WriteByte(' ')
	}
	b.WriteString(e.Msg)
	return b.String()
}

// ErrorList is every problem found in a config file, sorted by position.
// Load and Parse return one whenever the file is not a valid config, so that
// a user fixes all problems in one edit instead of one per run.
type ErrorList []*Error

// Error renders one problem per line.
func (l ErrorList) Error() string {
	lines := make([]string, len(l))
	for i, e := range l {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap exposes the entries to errors.As and errors.Is.
func (l ErrorList) Unwrap() []error {
	errs := make([]error, len(l))
	for i, e := range l {
		errs[i] = e
	}
	return errs
}

// sort orders the list by position; problems at the same position keep the
// order they were found in, which follows the file.
func (l ErrorList) sort() {
	slices.SortStableFunc(l, func(a, b *Error) int {
		if a.Line != b.Line {
			return a.Line - b.Line
		}
		return a.Col - b.Col
	})
}

// describe names what a node holds, for "expected X, got Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
	default:
		return "a YAML document"
	}
	v := n.Value
	// A value pasted by mistake can be a whole file; the position already
	// says where it is.
	const maxShown = 40
	if r := []rune(v); len(r) > maxShown {
		v = string(r[:maxShown]) + "..."
	}
	switch n.ShortTag() {
	case "!!null":
		return "null"
	case "!!int", "!!float", "!!bool":
		return v
	}
	return strconv.Quote(v)
}

// checkText finds the first character YAML does not allow, which the parser
// reports without a position.
func checkText(data []byte) *Error {
	line, col := 1, 1
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			return &Error{Line: line, Col: col, Msg: fmt.Sprintf("invalid UTF-8 byte 0x%02x; a config must be UTF-8 text", data[i])}
		case !yamlPrintable(r):
			return &Error{Line: line, Col: col, Msg: fmt.Sprintf("character %U is not allowed in YAML", r)}
		}
		if r == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
		i += size
	}
	return nil
}

// yamlPrintable is YAML 1.2's c-printable set.
func yamlPrintable(r rune) bool {
	return r == '\t' || r == '\n' || r == '\r' || r == 0x85 ||
		0x20 <= r && r <= 0x7e || 0xa0 <= r && r <= 0xd7ff ||
		0xe000 <= r && r <= 0xfffd || 0x10000 <= r && r <= 0x10ffff
}

var yamlError = regexp.MustCompile(`(?s)^yaml: (?:line (\d+): )?(.*)$`)

// parserProblems are the errors of yaml.v3's parser stage, which it reports
// with the 0-based line of the mark instead of the 1-based one its scanner
// errors carry; the line is corrected for them.
var parserProblems = map[string]bool{
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"did not find expected '-' indicator":    true,
	"did not find expected <document start>": true,
	"did not find expected <stream-start>":   true,
	"did not find expected key":              true,
	"did not find expected node content":     true,
	"found duplicate %TAG directive":         true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
	"found undefined tag handle":             true,
}

// syntax records a parser error. yaml.v3 gives a line at most; without one
// the problem is on the first line, except for an undefined alias, which is
// looked up in the text.
func (d *decoder) syntax(data []byte, err error) {
	e := &Error{File: d.file, Line: 1, Col: 1, Msg: "invalid YAML: " + err.Error()}
	if m := yamlError.FindStringSubmatch(err.Error()); m != nil {
		e.Msg = "invalid YAML: " + m[2]
		if line, err := strconv.Atoi(m[1]); err == nil {
			e.Line = line
			if parserProblems[m[2]] {
				e.Line++
			}
		} else if name, ok := strings.CutPrefix(m[2], "unknown anchor '"); ok {
			e.Line, e.Col = findAlias(data, strings.TrimSuffix(name, "' referenced"))
		}
	}
	d.errs = append(d.errs, e)
}

// findAlias returns the position of the first "*name" in data, or 1:1.
func findAlias(data []byte, name string) (line, col int) {
	re, err := regexp.Compile(`(?m)(?:^|[\s\[{,:])(\*` + regexp.QuoteMeta(name) + `)(?:$|[\s\]},])`)
	if err != nil {
		return 1, 1
	}
	loc := re.FindSubmatchIndex(data)
	if loc == nil {
		return 1, 1
	}
	before := data[:loc[2]]
	line = 1 + bytes.Count(before, []byte("\n"))
	col = 1 + utf8.RuneCount(before[bytes.LastIndexByte(before, '\n')+1:])
	return line, col
}
