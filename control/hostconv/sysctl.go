package hostconv

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// SysctlRoot is where the network sysctls are: /proc/sys/net, of the network namespace of the
// thread that opens the file. Tests give another root (a temporary directory).
const SysctlRoot = "/proc/sys/net"

// ReadSysctl returns the value of key (under root, e.g. "ipv4/ip_forward") without its trailing
// newline.
func ReadSysctl(root, key string) (string, error) {
	b, err := os.ReadFile(filepath.Join(root, key))
	if err != nil {
		return "", fmt.Errorf("read sysctl %s: %w", key, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// SetSysctl gives key (under root) value, writing only when it holds another, so that a pass
// that finds everything in place writes nothing and can say so: changed reports that the value
// differed, also when the write then failed. The one writer of sysctls: the CNI ADD's for a new
// veth, the reconciler's on every pass. A key that does not exist is an error (reading it
// fails), never created.
func SetSysctl(root, key, value string) (changed bool, err error) {
	cur, err := ReadSysctl(root, key)
	if err != nil {
		return false, err
	}
	if cur == value {
		return false, nil
	}
	if err := os.WriteFile(filepath.Join(root, key), []byte(value), 0o644); err != nil {
		return true, fmt.Errorf("write sysctl %s: %w", key, err)
	}
	return true, nil
}
