package logging

import (
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/buffer"
	"go.uber.org/zap/zapcore"
)

// timeLayout is how the console format writes times.
const timeLayout = "2006-01-02T15:04:05.000Z0700"

// consoleEncoder writes what zapcore.NewConsoleEncoder writes with the
// encoder config of consoleConfig: time, level, logger name, caller and
// message separated by tabs, then the fields as JSON. Zap's prints each of
// the first through fmt, and formats the time from its layout on every
// line; this one appends them, formatting a second's date and zone once.
// Plain fields (plainFields) it writes with appendFields, as long as no
// field was added with With; other fields go through zap's.
// An access line takes about a third fewer instructions this way
// (BenchmarkAccessLine under cachegrind; figures in docs/performance.md).
// TestConsoleEncoder compares the two.
type consoleEncoder struct {
	// zapcore.Encoder is zap's console encoder with no key of the entry:
	// it holds the fields added with With and writes the context alone.
	zapcore.Encoder
	times *timeCache
	// noContext is true until the encoder is cloned, which zap's cores
	// do only to add fields with With. Fields added to an encoder that
	// was not cloned would not be written; only zap's cores add them,
	// and only to a clone.
	noContext bool
}

// consoleConfig is the encoder config of the console format: zap's
// development config with the time written as timeLayout.
func consoleConfig() zapcore.EncoderConfig {
	ec := zap.NewDevelopmentEncoderConfig()
	ec.EncodeTime = zapcore.TimeEncoderOfLayout(timeLayout)
	return ec
}

func newConsoleEncoder() zapcore.Encoder {
	ec := consoleConfig()
	ec.TimeKey, ec.LevelKey, ec.NameKey, ec.CallerKey, ec.MessageKey, ec.StacktraceKey = "", "", "", "", "", ""
	return consoleEncoder{Encoder: zapcore.NewConsoleEncoder(ec), times: new(timeCache), noContext: true}
}

var consoleBuffers = buffer.NewPool()

func (e consoleEncoder) Clone() zapcore.Encoder {
	return consoleEncoder{Encoder: e.Encoder.Clone(), times: e.times}
}

func (e consoleEncoder) EncodeEntry(ent zapcore.Entry, fields []zapcore.Field) (*buffer.Buffer, error) {
	var context *buffer.Buffer
	if !e.noContext || !plainFields(fields) {
		var err error
		if context, err = e.Encoder.EncodeEntry(zapcore.Entry{}, fields); err != nil {
			return nil, err
		}
		defer context.Free()
	}
	line := consoleBuffers.Get()
	sep := func() {
		if line.Len() > 0 {
			line.AppendByte('\t')
		}
	}
	if !ent.Time.IsZero() {
		e.times.append(line, ent.Time)
	}
	sep()
	line.AppendString(ent.Level.CapitalString())
	if ent.LoggerName != "" {
		sep()
		line.AppendString(ent.LoggerName)
	}
	if ent.Caller.Defined {
		sep()
		line.AppendString(ent.Caller.TrimmedPath())
	}
	sep()
	line.AppendString(ent.Message)
	switch {
	case context == nil:
		if len(fields) > 0 {
			sep()
			line.AppendByte('{')
			appendFields(line, fields, true, false)
			line.AppendByte('}')
		}
	case context.Len() > len(zapcore.DefaultLineEnding):
		// The context ends with the line ending, and is nothing else
		// when there are no fields.
		sep()
		_, _ = line.Write(context.Bytes()[:context.Len()-len(zapcore.DefaultLineEnding)])
	}
	if ent.Stack != "" {
		line.AppendByte('\n')
		line.AppendString(ent.Stack)
	}
	line.AppendString(zapcore.DefaultLineEnding)
	return line, nil
}

// timeCache formats times as timeLayout does, keeping the last second's
// date and zone.
type timeCache struct {
	last atomic.Pointer[cachedSecond]
}

type cachedSecond struct {
	unix int64
	loc  *time.Location
	date string // through the seconds
	zone string // "Z" or the offset
}

func (c *timeCache) append(b *buffer.Buffer, t time.Time) {
	s := c.last.Load()
	if s == nil || s.unix != t.Unix() || s.loc != t.Location() {
		s = &cachedSecond{unix: t.Unix(), loc: t.Location(), date: t.Format("2006-01-02T15:04:05"), zone: t.Format("Z0700")}
		c.last.Store(s)
	}
	ms := t.Nanosecond() / int(time.Millisecond)
	b.AppendString(s.date)
	b.AppendByte('.')
	b.AppendByte(byte('0' + ms/100))
	b.AppendByte(byte('0' + ms/10%10))
	b.AppendByte(byte('0' + ms%10))
	b.AppendString(s.zone)
}
