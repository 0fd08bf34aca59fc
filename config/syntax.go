package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// yaml.v3 reports a syntax error as text: "yaml: line N: problem", where N
// is the line of the problem's context when it has one (the collection it
// was parsing), else of the problem; its marks are not exported. So the
// position of the problem is found again here: the shortest prefix of the
// file that fails with the very same error ends at the character the parser
// gave up on. Each probe parses a prefix, a few dozen of them by bisection,
// paid only when a file does not parse.

var yamlError = regexp.MustCompile(`(?s)^yaml: (?:line (\d+): )?(.*)$`)

// contextProblems are the parser's errors whose line is that of the
// collection being parsed (0-based, unless the collection starts on the
// first line: then it is the problem's), by the kind of that collection.
var contextProblems = map[string]yaml.Kind{
	"did not find expected key":           yaml.MappingNode,
	"did not find expected ',' or '}'":    yaml.MappingNode,
	"did not find expected '-' indicator": yaml.SequenceNode,
	"did not find expected ',' or ']'":    yaml.SequenceNode,
}

// parserProblems are the other errors of yaml.v3's parser stage, which it
// reports with the 0-based line of their mark instead of the 1-based one its
// scanner errors carry; the line is corrected for them.
var parserProblems = map[string]bool{
	"did not find expected <document start>": true,
	"did not find expected <stream-start>":   true,
	"did not find expected node content":     true,
	"found duplicate %TAG directive":         true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
	"found undefined tag handle":             true,
}

// syntax records a parser error at the character the parser stopped at,
// with the collection it was in for the errors that have one:
// "invalid YAML: did not find expected key (in the mapping at 4:5)". An
// undefined alias is looked up in the text; an error without a line is on
// the first.
func (d *decoder) syntax(data []byte, err error) {
	e := &Error{File: d.file, Line: 1, Col: 1, Msg: "invalid YAML: " + err.Error()}
	defer func() { d.errs = append(d.errs, e) }()
	m := yamlError.FindStringSubmatch(err.Error())
	if m == nil {
		return
	}
	problem := m[2]
	e.Msg = "invalid YAML: " + problem
	line, lineErr := strconv.Atoi(m[1])
	if lineErr != nil {
		if name, ok := strings.CutPrefix(problem, "unknown anchor '"); ok {
			e.Line, e.Col = findAlias(data, strings.TrimSuffix(name, "' referenced"))
		}
		return
	}
	kind, inCollection := contextProblems[problem]
	if inCollection || parserProblems[problem] {
		line++
	}
	e.Line = min(line, lastLine(data))
	flow := strings.HasPrefix(problem, "did not find expected ',' or ")
	off, ok := problemAt(data, err.Error(), flow)
	if !ok {
		return
	}
	e.Line, e.Col = position(data, off)
	if !inCollection {
		return
	}
	// The collection the parser was in when it stopped is open at the end
	// of the text before the problem: one on the last path of that text's
	// tree, starting on the line the error names.
	if c := openCollection(data[:off], kind, line, flow); c != nil {
		word := "mapping"
		if kind == yaml.SequenceNode {
			word = "list"
		}
		e.Msg += fmt.Sprintf(" (in the %s at %d:%d)", word, c.Line, c.Column)
	}
}

// problemAt returns the offset in data of the character at which parsing
// fails with the error text want: the last of the shortest prefix failing
// so, moved back to the start of a key when it is the key's colon. With
// flow, the prefixes are closed with the brackets they leave open, so that
// their end is not the error. ok is false when no prefix fails so.
func problemAt(data []byte, want string, flow bool) (off int, ok bool) {
	fails := func(end int) bool {
		doc := data[:end:end]
		if flow {
			doc = append(doc, closers(doc)...)
		}
		return parseError(doc) == want
	}
	if !fails(len(data)) {
		return 0, false
	}
	// The first line at whose end the prefix fails, then the first
	// character of that line.
	var ends []int
	for i, c := range data {
		if c == '\n' || c == '\r' && (i+1 == len(data) || data[i+1] != '\n') {
			ends = append(ends, i+1)
		}
	}
	if len(ends) == 0 || ends[len(ends)-1] != len(data) {
		ends = append(ends, len(data))
	}
	k, _ := slices.BinarySearchFunc(ends, true, func(end int, _ bool) int {
		if fails(end) {
			return 1
		}
		return -1
	})
	k = min(k, len(ends)-1)
	var chars []int // the prefix ends within the line, a character each
	start := 0
	if k > 0 {
		start = ends[k-1]
	}
	for i := start; i < ends[k]; {
		_, size := utf8.DecodeRune(data[i:])
		i += size
		chars = append(chars, i)
	}
	j, _ := slices.BinarySearchFunc(chars, true, func(end int, _ bool) int {
		if fails(end) {
			return 1
		}
		return -1
	})
	end := chars[min(j, len(chars)-1)]
	_, size := utf8.DecodeLastRune(data[:end])
	off = end - size
	// The end of a line completed the token at fault: it is the one
	// before.
	if data[off] == '\n' || data[off] == '\r' {
		for off > 0 && strings.IndexByte(" \t\r\n", data[off]) >= 0 {
			off--
		}
	}
	if data[off] == ':' {
		// "key:" where no key may stand: the key is the token at fault.
		for off > 0 && !isBlankOrFlow(data[off-1]) {
			off--
		}
	}
	return off, true
}

func isBlankOrFlow(c byte) bool {
	return strings.IndexByte(" \t\r\n,[]{}", c) >= 0
}

// parseError returns the text of the first error of parsing every document
// of data, or "".
func parseError(data []byte) string {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		switch {
		case errors.Is(err, io.EOF):
			return ""
		case err != nil:
			return err.Error()
		}
	}
}

// closers returns the brackets that close the flow collections data leaves
// open, innermost first. It knows quoted scalars and comments; a bracket
// counts where a token may start, so that one inside a plain scalar
// (path: /a[1]) does not.
func closers(data []byte) []byte {
	var open []byte
	for i := 0; i < len(data); i++ {
		tokenStart := i == 0 || isBlankOrFlow(data[i-1]) || data[i-1] == ':'
		switch c := data[i]; {
		case c == '#' && (i == 0 || isBlankOrFlow(data[i-1]) && data[i-1] != ','):
			for i < len(data) && data[i] != '\n' && data[i] != '\r' {
				i++
			}
		case c == '"' && tokenStart:
			for i++; i < len(data) && data[i] != '"'; i++ {
				if data[i] == '\\' {
					i++
				}
			}
		case c == '\'' && tokenStart:
			for i++; i < len(data); i++ {
				if data[i] == '\'' {
					if i+1 < len(data) && data[i+1] == '\'' {
						i++
						continue
					}
					break
				}
			}
		case c == '[' && tokenStart:
			open = append(open, ']')
		case c == '{' && tokenStart:
			open = append(open, '}')
		case (c == ']' || c == '}') && len(open) > 0 && open[len(open)-1] == c:
			open = open[:len(open)-1]
		}
	}
	slices.Reverse(open)
	return open
}

// openCollection returns the innermost collection of kind on the last path
// of data's tree (the collections still open where data ends) that starts
// on line, or failing that on the first line (where the parser names the
// problem's line instead); nil when there is none or data does not parse.
func openCollection(data []byte, kind yaml.Kind, line int, flow bool) *yaml.Node {
	if flow {
		data = append(data[:len(data):len(data)], closers(data)...)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var last *yaml.Node
	for {
		var n yaml.Node
		if err := dec.Decode(&n); err != nil {
			if !errors.Is(err, io.EOF) {
				return nil
			}
			break
		}
		last = &n
	}
	var onLine, onFirst *yaml.Node
	for n := last; n != nil; {
		if n.Kind == kind && n.Line == line {
			onLine = n
		}
		if n.Kind == kind && n.Line == 1 {
			onFirst = n
		}
		if n.Kind == yaml.AliasNode || len(n.Content) == 0 {
			break
		}
		n = n.Content[len(n.Content)-1]
	}
	if onLine != nil {
		return onLine
	}
	return onFirst
}

// lastLine returns the number of data's last line holding a character.
func lastLine(data []byte) int {
	trimmed := bytes.TrimRight(data, "\r\n")
	line, _ := position(data, len(trimmed))
	return line
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
	return position(data, loc[2])
}
