package config

import (
	"fmt"
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
	// Warning marks a problem that does not stop the config from loading.
	Warning bool
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
	if e.Warning {
		b.WriteString("warning: ")
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

// checkText finds the first character a config may not hold, which the
// parser reports without a position, or at a position an editor does not
// show. Lines end at "\n", "\r\n" or a lone "\r", as in YAML 1.2 and in
// editors. U+0085, U+2028 and U+2029 are refused: yaml.v3 counts them as
// line breaks, as YAML 1.1 did, where editors and YAML 1.2 do not, so every
// later position would be off by their number.
func checkText(data []byte) *Error {
	line, col := 1, 1
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			return &Error{Line: line, Col: col, Msg: fmt.Sprintf("invalid UTF-8 byte 0x%02x; a config must be UTF-8 text", data[i])}
		case r == 0x85 || r == 0x2028 || r == 0x2029:
			return &Error{Line: line, Col: col, Msg: fmt.Sprintf("character %U (%s) is not allowed: YAML parsers disagree on whether it ends a line; remove it, or write it as \\u%04X in a double-quoted string", r, lineBreakNames[r], r)}
		case !yamlPrintable(r):
			return &Error{Line: line, Col: col, Msg: fmt.Sprintf("character %U is not allowed in YAML", r)}
		}
		i += size
		if r == '\n' || r == '\r' && (i == len(data) || data[i] != '\n') {
			line, col = line+1, 1
		} else {
			col++
		}
	}
	return nil
}

// lineBreakNames names the characters YAML 1.1 took as line breaks besides
// "\n" and "\r".
var lineBreakNames = map[rune]string{0x85: "next line", 0x2028: "line separator", 0x2029: "paragraph separator"}

// position returns the 1-based line and column of byte offset off in data,
// counting lines as checkText does and columns in characters.
func position(data []byte, off int) (line, col int) {
	line, start := 1, 0
	for i := 0; i < off; i++ {
		if data[i] == '\n' || data[i] == '\r' && (i+1 == len(data) || data[i+1] != '\n') {
			line, start = line+1, i+1
		}
	}
	return line, 1 + utf8.RuneCount(data[start:off])
}

// yamlPrintable is YAML 1.2's c-printable set.
func yamlPrintable(r rune) bool {
	return r == '\t' || r == '\n' || r == '\r' || r == 0x85 ||
		0x20 <= r && r <= 0x7e || 0xa0 <= r && r <= 0xd7ff ||
		0xe000 <= r && r <= 0xfffd || 0x10000 <= r && r <= 0x10ffff
}
