package poll

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestFor(t *testing.T) {
	tries := 0
	if err := For(5*time.Second, func() error {
		if tries++; tries < 3 {
			return errors.New("not yet")
		}
		return nil
	}); err != nil || tries != 3 {
		t.Errorf("For: %v after %d tries, want nil after 3", err, tries)
	}
	start := time.Now()
	err := For(100*time.Millisecond, func() error { return errors.New("never") })
	if err == nil || err.Error() != "never" {
		t.Errorf("For of a condition that never holds: %v, want its last error", err)
	}
	if took := time.Since(start); took < 100*time.Millisecond {
		t.Errorf("For gave up after %v, before its time", took)
	}
}

func TestEvery(t *testing.T) {
	// A pause of 0: tried again at once.
	tries := 0
	start := time.Now()
	if err := Every(0, 5*time.Second, func() error {
		if tries++; tries < 1000 {
			return errors.New("not yet")
		}
		return nil
	}); err != nil || tries != 1000 {
		t.Errorf("Every(0): %v after %d tries, want nil after 1000", err, tries)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("Every(0) took %v for 1000 tries: it paused", took)
	}

	// A long pause: tried at 0, 200, 400 and 600 ms at most, then given up, not before 500 ms.
	tries = 0
	start = time.Now()
	err := Every(200*time.Millisecond, 500*time.Millisecond, func() error {
		tries++
		return fmt.Errorf("try %d", tries)
	})
	took := time.Since(start)
	if err == nil || err.Error() != fmt.Sprintf("try %d", tries) {
		t.Errorf("Every of a condition that never holds: %v, want its last error (try %d)", err, tries)
	}
	if tries < 2 || tries > 4 {
		t.Errorf("Every with a pause of 200ms tried %d times in %v, want 2 to 4", tries, took)
	}
	if took < 500*time.Millisecond {
		t.Errorf("Every gave up after %v, before its time", took)
	}
}

// fatalTB records what Fatalf would have failed the test with.
type fatalTB struct {
	testing.TB
	failed string
}

func (f *fatalTB) Helper() {}

func (f *fatalTB) Fatalf(format string, args ...any) { f.failed = fmt.Sprintf(format, args...) }

func TestUntil(t *testing.T) {
	tb := &fatalTB{TB: t}
	Until(tb, "it holds", time.Second, func() error { return nil })
	if tb.failed != "" {
		t.Errorf("Until of a condition that holds failed the test: %s", tb.failed)
	}
	UntilEvery(tb, "the thing happened", 10*time.Millisecond, 50*time.Millisecond, func() error { return errors.New("it did not") })
	if want := "the thing happened: not within 50ms: it did not"; tb.failed != want {
		t.Errorf("UntilEvery of a condition that never holds failed the test with %q, want %q", tb.failed, want)
	}
}
