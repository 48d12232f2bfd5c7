package datastore

import "errors"

// Sentinel errors. Every error returned by this package that is one of these cases wraps the
// matching sentinel, so callers test with errors.Is.
var (
	// ErrNotFound: the key does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists: Create found the key already present.
	ErrExists = errors.New("already exists")
	// ErrConflict: the key's ModRevision is no longer the one the caller read (compare-and-swap lost).
	ErrConflict = errors.New("revision conflict")
	// ErrMalformed: a stored value cannot be decoded, has another version or fails validation.
	ErrMalformed = errors.New("malformed value")
	// ErrInvalid: a value or name given to a write or lookup fails validation; nothing was written.
	ErrInvalid = errors.New("invalid")
	// ErrClosed: the Client was closed.
	ErrClosed = errors.New("client closed")
)
