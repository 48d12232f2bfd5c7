package lab_test

import (
	"testing"

	"github.com/margaynet/margay/tests/cluster"
)

// TestMain removes the binaries cluster.Binaries builds once the tests are done.
func TestMain(m *testing.M) { cluster.Main(m) }
