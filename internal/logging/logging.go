// Package logging builds the zap loggers of affinity's commands: the
// console and JSON formats, and serve's logger, whose access lines are
// written in batches.
//
// It exists instead of zap's own encoders for the access log, one line per
// request: the encoders here write the plain fields an access line is made
// of (strings, integers, booleans, durations) themselves, and the console
// format's time, level, name and message, where zap goes through an
// interface call and fmt for each (BenchmarkAccessLine). They keep zap's
// output byte for byte: TestConsoleEncoder and TestJSONEncoder compare whole
// lines with zap's, and FuzzAppendFields compares the fields on arbitrary
// strings. Any other field type, or a logger with fields added by With, is
// left to zap.
package logging

import (
	"fmt"
	"io"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// New builds a logger writing to w at level (debug, info, warn or error)
// in format (console, for people, or json, for log pipelines).
func New(level, format string, w io.Writer) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("log level: %w", err)
	}
	enc, err := NewEncoder(format)
	if err != nil {
		return nil, err
	}
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), lvl)), nil
}

// NewEncoder returns the encoder of a log format, console or json.
func NewEncoder(format string) (zapcore.Encoder, error) {
	switch format {
	case "json":
		return newJSONEncoder(), nil
	case "console":
		return newConsoleEncoder(), nil
	}
	return nil, fmt.Errorf("log format %q: want console or json", format)
}
