package poll

import (
	"errors"
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
