package logging

import (
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// TestConsoleEncoder: consoleEncoder writes what zap's console encoder
// writes with the same config (see sameLines).
func TestConsoleEncoder(t *testing.T) {
	sameLines(t, func() zapcore.Encoder { return zapcore.NewConsoleEncoder(consoleConfig()) }, newConsoleEncoder)
}

// TestJSONEncoder: jsonEncoder writes what zap's JSON encoder writes with
// zap's production config (see sameLines).
func TestJSONEncoder(t *testing.T) {
	sameLines(t, func() zapcore.Encoder { return zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()) }, newJSONEncoder)
}

// sameLines checks that the encoders newGot makes write what those newWant
// makes write, for entries with and without each part, fields appendFields
// takes and fields it does not, fields added with With, and times in
// several zones and across second boundaries.
func sameLines(t *testing.T, newWant, newGot func() zapcore.Encoder) {
	east := time.FixedZone("east", 5*3600+30*60)
	west := time.FixedZone("west", -8*3600)
	base := time.Date(2026, 12, 1, 23, 59, 59, 999_999_999, time.UTC)
	entries := []zapcore.Entry{
		{Level: zapcore.InfoLevel, Time: base, LoggerName: "access", Message: "request"},
		{Level: zapcore.WarnLevel, Time: base.Add(time.Nanosecond), Message: "backend down"},
		{Level: zapcore.ErrorLevel, Time: base.In(east), Message: "tab\tand\nnewline \"quoted\" é"},
		{Level: zapcore.DebugLevel, Time: base.Add(-999 * time.Millisecond).In(west), Message: ""},
		{Level: zapcore.DPanicLevel, Message: "no time"},
		{Level: zapcore.Level(42), Time: base.Add(1500 * time.Millisecond), Message: "odd level"},
		{Level: zapcore.InfoLevel, Time: base, LoggerName: "a.b", Message: "with caller and stack",
			Caller: zapcore.NewEntryCaller(0, "/src/affinity/proxy/handler.go", 42, true), Stack: "goroutine 1 [running]:\nmain.main()"},
		{Level: zapcore.InfoLevel, Time: time.Date(1969, 12, 31, 23, 59, 59, 5_000_000, time.UTC), Message: "before 1970"},
		{Level: zapcore.InfoLevel, Time: base.Local(), Message: "local"},
	}
	fieldSets := [][]zapcore.Field{
		nil,
		// An access line's fields, which appendFields writes.
		{zap.String("client", "192.0.2.1:50312"), zap.String("method", "GET"), zap.String("host", "shop.example"),
			zap.String("path", "/cart"), zap.Int("status", 200), zap.Int64("bytes", 1432),
			zap.Duration("duration", 1200*time.Microsecond), zap.String("pool", "web"), zap.String("backend", "web-2"),
			zap.Int("attempts", 1), zap.String("sticky", "kept"), zap.Bool("aborted", false)},
		{zap.String("path", "/a\"b\\c\n\x00\xffé"), zap.String("", "")},
		// One field appendFields does not take, so zap writes them all.
		{zap.String("client", "192.0.2.1:50312"), zap.Int("status", 200), zap.Duration("duration", 1200*time.Microsecond),
			zap.Bool("aborted", false), zap.Stringer("sticky", zapcore.InfoLevel)},
		{zap.Error(errors.New("dial tcp: refused")), zap.Time("at", base), zap.Strings("tried", []string{"b1", "b2"}),
			zap.Namespace("ns"), zap.Int64("n", -1)},
	}
	withs := [][]zapcore.Field{nil, {zap.String("pool", "web")}, {zap.Namespace("outer")}}
	for _, with := range withs {
		want, got := newWant(), newGot()
		if with != nil {
			// As zap's cores do: With adds its fields to a clone.
			want, got = want.Clone(), got.Clone()
		}
		for _, f := range with {
			f.AddTo(want)
			f.AddTo(got)
		}
		for _, ent := range entries {
			for _, fields := range fieldSets {
				wb, err := want.EncodeEntry(ent, fields)
				if err != nil {
					t.Fatal(err)
				}
				gb, err := got.EncodeEntry(ent, fields)
				if err != nil {
					t.Fatal(err)
				}
				if gb.String() != wb.String() {
					t.Errorf("with %v, entry %q, fields %v:\n got %q\nwant %q", with, ent.Message, fields, gb.String(), wb.String())
				}
				gb.Free()
				wb.Free()
			}
		}
	}
}

// TestTimeCache: times one after another, as log lines come, and out of
// order from several goroutines, are written as timeLayout formats them.
func TestTimeCache(t *testing.T) {
	tc := new(timeCache)
	check := func(tm time.Time) {
		b := consoleBuffers.Get()
		defer b.Free()
		tc.append(b, tm)
		if want := tm.Format(timeLayout); b.String() != want {
			t.Errorf("%v: got %q, want %q", tm, b.String(), want)
		}
	}
	start := time.Date(2026, 3, 29, 0, 59, 58, 0, time.UTC)
	for i := range 3000 {
		check(start.Add(time.Duration(i) * 1337 * time.Microsecond))
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			zone := time.FixedZone("z", g*3600)
			for i := range 500 {
				check(start.Add(time.Duration((i*7919+g*104729)%5000) * time.Millisecond).In(zone))
			}
		})
	}
	wg.Wait()
}
