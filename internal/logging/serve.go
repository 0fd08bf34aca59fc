package logging

import (
	"errors"
	"fmt"
	"io"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// The access log's lines are gathered in a buffer of accessBuffer bytes
// and written when it fills or accessFlush after it last was, whichever
// comes first.
const (
	accessBuffer = 256 << 10
	accessFlush  = time.Second
)

// Serve is the logger of `affinity serve`. Its level can change while it is
// in use, so that a reload can apply log.level.
//
// The access log (log.access) is written in batches, every other line at
// once: a write to the log file for each request costs the proxy about as
// much CPU as encoding the line (BenchmarkAccessLine). The price is that
// an access line reaches the file up to accessFlush late, and that
// the lines of the last second are lost if the process is killed
// (SIGKILL, a crash); a stop by SIGINT or SIGTERM writes them.
type Serve struct {
	*zap.Logger
	// Level is the logger's level, which may be changed at any time.
	Level  zap.AtomicLevel
	access *zapcore.BufferedWriteSyncer
}

// NewServe builds serve's logger writing to w at level (debug, info, warn
// or error) in format (console or json). Entries of the logger named
// accessName (the access log) are batched; every other entry is written
// at once.
func NewServe(level, format, accessName string, w io.Writer) (*Serve, error) {
	atom, err := zap.ParseAtomicLevel(level)
	if err != nil {
		return nil, fmt.Errorf("log level: %w", err)
	}
	enc, err := NewEncoder(format)
	if err != nil {
		return nil, err
	}
	// A clone would do, but a clone may hold fields added with With, and
	// the encoders write a line faster when they know it holds none.
	accessEnc, _ := NewEncoder(format)
	// One lock for both, so that a batch of access lines and another
	// line never interleave.
	ws := zapcore.Lock(zapcore.AddSync(w))
	access := &zapcore.BufferedWriteSyncer{WS: writeOnly{ws}, Size: accessBuffer, FlushInterval: accessFlush}
	core := accessRouter{
		name:   accessName,
		Core:   zapcore.NewCore(enc, ws, atom),
		access: zapcore.NewCore(accessEnc, access, atom),
	}
	return &Serve{Logger: zap.New(core), Level: atom, access: access}, nil
}

// writeOnly is a WriteSyncer whose Sync does nothing. The access log's
// buffer syncs what it wraps each time it flushes, every accessFlush,
// holding its lock: with stderr on a file that is an fsync a second, and
// every request that logs waits for the disk meanwhile. A line written is
// the kernel's, as nginx leaves its access log: a crash of the process
// loses none of them.
type writeOnly struct{ zapcore.WriteSyncer }

func (writeOnly) Sync() error { return nil }

// Close writes what is buffered and stops the buffer's flushing.
func (l *Serve) Close() error {
	return errors.Join(l.Sync(), l.access.Stop())
}

// accessRouter sends the entries of the proxy's access logger to the
// access core, and every other entry to the embedded one.
type accessRouter struct {
	name string // the access logger's name
	zapcore.Core
	access zapcore.Core
}

// With adds fields to both cores.
func (r accessRouter) With(fields []zapcore.Field) zapcore.Core {
	return accessRouter{name: r.name, Core: r.Core.With(fields), access: r.access.With(fields)}
}

// Check lets the core of ent's logger decide whether to write it.
func (r accessRouter) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if ent.LoggerName == r.name {
		return r.access.Check(ent, ce)
	}
	return r.Core.Check(ent, ce)
}

// Write writes ent with the core of its logger.
func (r accessRouter) Write(ent zapcore.Entry, fields []zapcore.Field) error {
	if ent.LoggerName == r.name {
		return r.access.Write(ent, fields)
	}
	return r.Core.Write(ent, fields)
}

// Sync flushes both cores.
func (r accessRouter) Sync() error {
	return errors.Join(r.access.Sync(), r.Core.Sync())
}
