package bgp

import (
	"context"
	"log/slog"
	"sync/atomic"

	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
)

// logAdapter sends GoBGP's log messages to slog. GoBGP reports routine session events at Info,
// so they go out at Debug; its warnings and errors keep their level.
type logAdapter struct {
	l *slog.Logger
	// stopping is set by a planned stop, whose shut-down listener GoBGP reports as a failed
	// accept: expected then, so not a warning.
	stopping atomic.Bool
}

func newLogAdapter(l *slog.Logger) *logAdapter { return &logAdapter{l: l.With("source", "gobgp")} }

func (a *logAdapter) log(level slog.Level, msg string, fields gobgplog.Fields) {
	if !a.l.Enabled(context.Background(), level) {
		return
	}
	attrs := make([]any, 0, 2*len(fields))
	for k, v := range fields {
		attrs = append(attrs, k, v)
	}
	a.l.Log(context.Background(), level, msg, attrs...)
}

func (a *logAdapter) Panic(msg string, f gobgplog.Fields) {
	a.log(slog.LevelError, msg, f)
	panic(msg)
}

// Fatal does not exit: an embedded speaker must not end the agent.
func (a *logAdapter) Fatal(msg string, f gobgplog.Fields) { a.log(slog.LevelError, msg, f) }
func (a *logAdapter) Error(msg string, f gobgplog.Fields) { a.log(slog.LevelError, msg, f) }
func (a *logAdapter) Warn(msg string, f gobgplog.Fields) {
	if a.stopping.Load() && msg == "Failed to AcceptTCP" {
		a.log(slog.LevelDebug, msg, f)
		return
	}
	a.log(slog.LevelWarn, msg, f)
}
func (a *logAdapter) Info(msg string, f gobgplog.Fields)  { a.log(slog.LevelDebug, msg, f) }
func (a *logAdapter) Debug(msg string, f gobgplog.Fields) { a.log(slog.LevelDebug-4, msg, f) }
func (a *logAdapter) SetLevel(gobgplog.LogLevel)          {}

// GetLevel lets GoBGP skip building Debug messages that would be dropped anyway.
func (a *logAdapter) GetLevel() gobgplog.LogLevel {
	if a.l.Enabled(context.Background(), slog.LevelDebug-4) {
		return gobgplog.DebugLevel
	}
	return gobgplog.InfoLevel
}
