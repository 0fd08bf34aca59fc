package logging

import (
	"go.uber.org/zap"
	"go.uber.org/zap/buffer"
	"go.uber.org/zap/zapcore"
)

// jsonEncoder is zap's JSON encoder with zap's production config, which
// leaves plain fields (plainFields) to appendFields as long as no field
// was added with With. TestJSONEncoder compares it with zap's.
type jsonEncoder struct {
	zapcore.Encoder
	// noContext is true until the encoder is cloned, which zap's cores
	// do only to add fields with With. Fields added to an encoder that
	// was not cloned would not be written; only zap's cores add them,
	// and only to a clone.
	noContext bool
}

func newJSONEncoder() zapcore.Encoder {
	return jsonEncoder{Encoder: zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), noContext: true}
}

var jsonBuffers = buffer.NewPool()

func (e jsonEncoder) Clone() zapcore.Encoder {
	return jsonEncoder{Encoder: e.Encoder.Clone()}
}

func (e jsonEncoder) EncodeEntry(ent zapcore.Entry, fields []zapcore.Field) (*buffer.Buffer, error) {
	// Zap writes a stack after the fields; such a line is left to it.
	if !e.noContext || len(fields) == 0 || ent.Stack != "" || !plainFields(fields) {
		return e.Encoder.EncodeEntry(ent, fields)
	}
	head, err := e.Encoder.EncodeEntry(ent, nil)
	if err != nil {
		return nil, err
	}
	defer head.Free()
	// The entry alone is an object, then the line ending; the fields go
	// before its closing brace.
	end := len("}" + zapcore.DefaultLineEnding)
	line := jsonBuffers.Get()
	_, _ = line.Write(head.Bytes()[:head.Len()-end])
	if head.Len() > 1+end {
		line.AppendByte(',')
	}
	appendFields(line, fields, false, true)
	line.AppendString("}" + zapcore.DefaultLineEnding)
	return line, nil
}
