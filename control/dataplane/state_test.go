package dataplane

import (
	"regexp"
	"testing"
)

// isCaliName accepts exactly what the regexp it replaced accepts.
func TestIsCaliName(t *testing.T) {
	re := regexp.MustCompile(`^cali[0-9a-f]{11}$`)
	for _, name := range []string{"cali0123456789a", "calif0f0f0f0f0f", "cali0123456789A", "cali0123456789", "cali0123456789ab",
		"cal10123456789a", "eth0", "", "cali0123456789g", "xali0123456789a", "cali012345678/a", "caliabcdefabcde"} {
		if got, want := isCaliName(name), re.MatchString(name); got != want {
			t.Errorf("isCaliName(%q) = %v, want %v", name, got, want)
		}
	}
}
