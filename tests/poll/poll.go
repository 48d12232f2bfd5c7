// Package poll is how tests wait: a condition polled until it holds or a deadline passes, never a
// sleep that hopes the thing has happened.
package poll

import (
	"testing"
	"time"
)

// interval is the time between two tries of a condition.
const interval = 25 * time.Millisecond

// For polls cond until it returns nil or within has passed, and returns its last error (nil
// when it held).
func For(within time.Duration, cond func() error) error {
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil || !time.Now().Before(deadline) {
			return err
		}
		time.Sleep(interval)
	}
}

// Until polls cond as For does and fails the test, naming what did not happen and the
// condition's last error, when it has not held within the time.
func Until(tb testing.TB, what string, within time.Duration, cond func() error) {
	tb.Helper()
	if err := For(within, cond); err != nil {
		tb.Fatalf("%s: not within %s: %v", what, within, err)
	}
}
