package logging

import (
	"errors"
	"math"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// tricky holds strings with each case of zap's escaping: nothing to escape,
// quotes and backslashes, the control bytes with a short escape and those
// without, DEL, valid UTF-8 of every length, invalid and cut-off UTF-8, and
// escapes at the start, in the middle and at the end.
var tricky = []string{
	"", "a", "192.0.2.1:50312", "/cart?id=7&x=y", `say "hi"`, `C:\path\`, "\"", "\\",
	"line\nbreak", "cr\r", "\ttab", "\x00", "\x01\x1f", "\x7f", "é", "日本", "😀 emoji",
	"\u2028\u2029", "\xff", "bad\xffutf8", "\xe2\x82", "\xe2\x82\xac", "\xc3", "é\xc3(",
	"long plain string over eight bytes", "<script>&amp;</script>",
}

// zapFields is what zap's encoders write for fields: with spaced, as the
// console format writes them ({"key": value}, durations as strings);
// otherwise as the json format does ({"key":value}, durations in seconds).
func zapFields(t testing.TB, fields []zapcore.Field, spaced bool) string {
	t.Helper()
	var enc zapcore.Encoder
	if spaced {
		enc = zapcore.NewConsoleEncoder(zapcore.EncoderConfig{EncodeDuration: zapcore.StringDurationEncoder})
	} else {
		enc = zapcore.NewJSONEncoder(zapcore.EncoderConfig{EncodeDuration: zapcore.SecondsDurationEncoder})
	}
	b, err := enc.EncodeEntry(zapcore.Entry{}, fields)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Free()
	s := b.String()
	return s[:len(s)-len(zapcore.DefaultLineEnding)]
}

// ourFields is what appendFields writes for fields, in braces.
func ourFields(fields []zapcore.Field, spaced bool) string {
	b := jsonBuffers.Get()
	defer b.Free()
	b.AppendByte('{')
	appendFields(b, fields, spaced, !spaced)
	b.AppendByte('}')
	return b.String()
}

// TestFields: appendFields writes what zap's encoders write, for keys and
// values with every kind of escape, integers and durations at their
// limits, and booleans.
func TestFields(t *testing.T) {
	var sets [][]zapcore.Field
	for _, s := range tricky {
		sets = append(sets, []zapcore.Field{zap.String(s, s)}, []zapcore.Field{zap.String("k", s), zap.String(s, "v")})
	}
	sets = append(sets, []zapcore.Field{
		zap.Int("status", 200), zap.Int64("bytes", 0), zap.Int64("min", math.MinInt64), zap.Int64("max", math.MaxInt64),
		zap.Bool("aborted", false), zap.Bool("ok", true),
		zap.Duration("zero", 0), zap.Duration("ns", 1), zap.Duration("neg", -5*time.Second),
		zap.Duration("duration", 1200*time.Microsecond), zap.Duration("long", 90*time.Minute+time.Nanosecond),
		zap.Duration("maxd", math.MaxInt64), zap.Duration("mind", math.MinInt64),
	})
	for _, fields := range sets {
		for _, spaced := range []bool{true, false} {
			if !plainFields(fields) {
				t.Fatalf("plainFields(%v) = false", fields)
			}
			if got, want := ourFields(fields, spaced), zapFields(t, fields, spaced); got != want {
				t.Errorf("spaced %v, fields %v:\n got %q\nwant %q", spaced, fields, got, want)
			}
		}
	}
}

// TestPlainFields: the types appendFields writes, and some of those it
// leaves to zap.
func TestPlainFields(t *testing.T) {
	for _, tc := range []struct {
		field zapcore.Field
		plain bool
	}{
		{zap.String("k", "v"), true},
		{zap.Int("k", 1), true},
		{zap.Int64("k", 1), true},
		{zap.Bool("k", true), true},
		{zap.Duration("k", time.Second), true},
		{zap.Int32("k", 1), false},
		{zap.Uint("k", 1), false},
		{zap.Float64("k", 1.5), false},
		{zap.Stringer("k", zapcore.InfoLevel), false},
		{zap.Error(errors.New("e")), false},
		{zap.Time("k", time.Unix(0, 0)), false},
		{zap.Strings("k", []string{"a"}), false},
		{zap.Namespace("k"), false},
		{zap.Skip(), false},
	} {
		if got := plainFields([]zapcore.Field{zap.String("first", "v"), tc.field}); got != tc.plain {
			t.Errorf("plainFields with %v (type %d) = %v, want %v", tc.field, tc.field.Type, got, tc.plain)
		}
	}
	if !plainFields(nil) {
		t.Error("plainFields(nil) = false")
	}
}

// FuzzAppendFields: for any key, value, integer and boolean, appendFields
// writes what zap's encoders write.
func FuzzAppendFields(f *testing.F) {
	for i, s := range tricky {
		f.Add(s, tricky[(i+1)%len(tricky)], int64(i)*1_234_567, i%2 == 0)
	}
	f.Fuzz(func(t *testing.T, key, value string, n int64, b bool) {
		fields := []zapcore.Field{zap.String(key, value), zap.Int64(value, n), zap.Duration(key, time.Duration(n)), zap.Bool(key, b)}
		for _, spaced := range []bool{true, false} {
			if got, want := ourFields(fields, spaced), zapFields(t, fields, spaced); got != want {
				t.Errorf("spaced %v, fields %v:\n got %q\nwant %q", spaced, fields, got, want)
			}
		}
	})
}
