package datastore

import (
	"context"
	"errors"
	"fmt"
)

// MaxAttempts bounds the attempts of one compare-and-swap (Retry).
const MaxAttempts = 100

// ErrContention: every attempt of a compare-and-swap lost to another writer; the caller may try
// again later.
var ErrContention = errors.New("too much contention: every compare-and-swap attempt lost")

// Retry is the one loop of every read-modify-write: it runs attempt, which reads, decides and
// writes at the revisions it read, again while attempt fails with ErrConflict (another writer
// won the race), at most MaxAttempts times. It returns attempt's first other result, or
// ErrContention, which does not wrap ErrConflict, so that a Retry around one that gave up does
// not try again; it stops early, with ctx's error, when ctx is done.
func Retry(ctx context.Context, attempt func() error) error {
	var err error
	for range MaxAttempts {
		if err = attempt(); !errors.Is(err, ErrConflict) {
			return err
		}
		if cerr := ctx.Err(); cerr != nil {
			return fmt.Errorf("%w (after %w)", cerr, err)
		}
	}
	return fmt.Errorf("%w (the last: %v)", ErrContention, err)
}
