package netns

import (
	"io"
	"strings"
	"testing"
)

// LogWriter sends what a process under test writes to the test log, line by line, behind prefix.
func LogWriter(tb testing.TB, prefix string) io.Writer { return logWriter{tb, prefix} }

type logWriter struct {
	tb     testing.TB
	prefix string
}

func (w logWriter) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		w.tb.Log(w.prefix + line)
	}
	return len(p), nil
}
