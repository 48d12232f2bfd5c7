// Package poll is how tests wait: a condition polled until it holds or a deadline passes, never a
// sleep that hopes the thing has happened.
//
// The condition runs on the caller's goroutine, at least once, and is tried again until it
// returns nil or the time is up, so it may end the test itself (t.Fatal) when it sees that
// waiting longer is pointless, e.g. the process it waits for has exited.
package poll

import (
	"testing"
	"time"
)

// interval is the time between two tries of a condition, unless Every or UntilEvery says.
const interval = 25 * time.Millisecond

// For polls cond until it returns nil or within has passed, and returns its last error (nil
// when it held).
func For(within time.Duration, cond func() error) error {
	return Every(interval, within, cond)
}

// Every is For with its own pause between two tries instead of 25 ms: a longer one for a
// condition that is costly to try (a round of queries, a datagram sent each time), a shorter one
// where the moment the condition comes to hold is measured, and 0 for a condition that waits
// itself (a read with a deadline).
func Every(pause, within time.Duration, cond func() error) error {
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil || !time.Now().Before(deadline) {
			return err
		}
		time.Sleep(pause)
	}
}

// Until polls cond as For does and fails the test, naming what did not happen and the
// condition's last error, when it has not held within the time.
func Until(tb testing.TB, what string, within time.Duration, cond func() error) {
	tb.Helper()
	UntilEvery(tb, what, interval, within, cond)
}

// UntilEvery is Until with Every's pause between two tries.
func UntilEvery(tb testing.TB, what string, pause, within time.Duration, cond func() error) {
	tb.Helper()
	if err := Every(pause, within, cond); err != nil {
		tb.Fatalf("%s: not within %s: %v", what, within, err)
	}
}
