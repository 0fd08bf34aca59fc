package logging

import (
	"time"
	"unicode/utf8"

	"go.uber.org/zap/buffer"
	"go.uber.org/zap/zapcore"
)

// plainFields reports whether appendFields takes every one of fields: the
// strings, 64-bit integers (zap.Int, zap.Int64), booleans and durations an
// access log line is made of. Any other type (objects, errors, stringers,
// namespaces) is left to zap's encoder, which also recovers from a
// panicking marshaler.
func plainFields(fields []zapcore.Field) bool {
	for i := range fields {
		switch fields[i].Type {
		case zapcore.StringType, zapcore.Int64Type, zapcore.BoolType, zapcore.DurationType:
		default:
			return false
		}
	}
	return true
}

// appendFields writes plain fields (see plainFields) as zap's JSON encoder
// writes them into an object: comma-separated "key":value pairs, a space
// after each colon and comma when spaced (the console format), durations as
// Go duration strings or, with seconds, as a number of seconds (the json
// format). Zap's goes through an interface call, a check of the last byte
// written and a byte-at-a-time escaping loop per key and value; with the
// access log on that is most of the line (BenchmarkAccessLine).
// TestFields compares the two.
func appendFields(b *buffer.Buffer, fields []zapcore.Field, spaced, seconds bool) {
	comma, colon := `,"`, `":`
	if spaced {
		comma, colon = `, "`, `": `
	}
	for i := range fields {
		f := &fields[i]
		if i > 0 {
			b.AppendString(comma)
		} else {
			b.AppendByte('"')
		}
		appendEscaped(b, f.Key)
		b.AppendString(colon)
		switch f.Type {
		case zapcore.StringType:
			appendQuoted(b, f.String)
		case zapcore.BoolType:
			b.AppendBool(f.Integer == 1)
		case zapcore.DurationType:
			d := time.Duration(f.Integer)
			if seconds {
				appendSeconds(b, d)
			} else {
				appendQuoted(b, d.String())
			}
		default: // zapcore.Int64Type, the only other type plainFields takes
			b.AppendInt(f.Integer)
		}
	}
}

func appendQuoted(b *buffer.Buffer, s string) {
	b.AppendByte('"')
	appendEscaped(b, s)
	b.AppendByte('"')
}

// appendSeconds writes d as zapcore.SecondsDurationEncoder does.
func appendSeconds(b *buffer.Buffer, d time.Duration) {
	// An int64 of nanoseconds is always a finite number of seconds, so
	// zap's NaN and Inf cases do not arise.
	b.AppendFloat(float64(d)/float64(time.Second), 64)
}

// safeByte is true for the bytes a JSON string holds as they are: ASCII
// from 0x20 but '"' and '\\'. Bytes from 0x80 are part of UTF-8, which
// has to be checked.
var safeByte = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// appendEscaped writes s escaped for a JSON string as zap's JSON encoder
// does: \" \\ \n \r \t, other control bytes as \u00XX, and each byte of
// invalid UTF-8 as \ufffd. A string with nothing to escape, the usual
// case, is checked in a tight loop and copied in one piece.
func appendEscaped(b *buffer.Buffer, s string) {
	i := 0
	for i < len(s) && safeByte[s[i]] {
		i++
	}
	last := 0
	for i < len(s) {
		c := s[i]
		if safeByte[c] {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			if r, size := utf8.DecodeRuneInString(s[i:]); r != utf8.RuneError || size != 1 {
				i += size
				continue
			}
			b.AppendString(s[last:i])
			b.AppendString(`\ufffd`)
			i++
			last = i
			continue
		}
		b.AppendString(s[last:i])
		switch c {
		case '"', '\\':
			b.AppendByte('\\')
			b.AppendByte(c)
		case '\n':
			b.AppendString(`\n`)
		case '\r':
			b.AppendString(`\r`)
		case '\t':
			b.AppendString(`\t`)
		default:
			b.AppendString(`\u00`)
			b.AppendByte(hexDigits[c>>4])
			b.AppendByte(hexDigits[c&0xF])
		}
		i++
		last = i
	}
	b.AppendString(s[last:])
}

const hexDigits = "0123456789abcdef"
