package hostconv

import (
	"regexp"
	"testing"
)

// IsVethName accepts exactly what the regexp it replaced accepts.
func TestIsVethName(t *testing.T) {
	re := regexp.MustCompile(`^cali[0-9a-f]{11}$`)
	for _, name := range []string{"cali0123456789a", "calif0f0f0f0f0f", "cali0123456789A", "cali0123456789", "cali0123456789ab",
		"cal10123456789a", "eth0", "", "cali0123456789g", "xali0123456789a", "cali012345678/a", "caliabcdefabcde"} {
		if got, want := IsVethName(name), re.MatchString(name); got != want {
			t.Errorf("IsVethName(%q) = %v, want %v", name, got, want)
		}
	}
}
