package hostconv

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// SetSysctl writes only a value that differs, and says whether it did.
func TestSetSysctl(t *testing.T) {
	root := t.TempDir()
	const key = "ipv4/conf/cali0123456789a/proxy_arp"
	path := filepath.Join(root, key)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	// As the kernel shows it: with a newline.
	if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// An old modification time tells a write (even of the same bytes) apart from none.
	old := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
	modTime := func() time.Time {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.ModTime()
	}

	if v, err := ReadSysctl(root, key); v != "1" || err != nil {
		t.Errorf("ReadSysctl = %q, %v; want 1", v, err)
	}

	// The same value: nothing written.
	if changed, err := SetSysctl(root, key, "1"); changed || err != nil {
		t.Errorf("SetSysctl of the value it has = %v, %v; want false, nil", changed, err)
	}
	if m := modTime(); !m.Equal(old) {
		t.Errorf("SetSysctl of the value it has wrote the file (modified %v)", m)
	}

	// Another value: written.
	if changed, err := SetSysctl(root, key, "0"); !changed || err != nil {
		t.Errorf("SetSysctl of another value = %v, %v; want true, nil", changed, err)
	}
	if v, err := ReadSysctl(root, key); v != "0" || err != nil {
		t.Errorf("after SetSysctl to 0: %q, %v", v, err)
	}

	// A key that does not exist: an error naming it, and no file created.
	const missing = "ipv4/conf/cali0123456789b/proxy_arp"
	changed, err := SetSysctl(root, missing, "1")
	if changed || !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "read sysctl "+missing) {
		t.Errorf("SetSysctl of a missing key = %v, %v; want false, read sysctl %s: ...not exist", changed, err, missing)
	}
	if _, err := os.Stat(filepath.Join(root, missing)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("SetSysctl of a missing key created it: %v", err)
	}
}

// A write that fails is reported as a change that failed, naming the key.
func TestSetSysctlWriteFails(t *testing.T) {
	// Read-only for everyone, root too: /proc/sys checks the mode itself.
	const root, key = "/proc/sys/kernel", "osrelease"
	if _, err := ReadSysctl(root, key); err != nil {
		t.Skip(err)
	}
	changed, err := SetSysctl(root, key, "margay")
	if !changed || err == nil || !strings.HasPrefix(err.Error(), "write sysctl "+key+": ") {
		t.Errorf("SetSysctl of a read-only key = %v, %v; want true, write sysctl %s: ...", changed, err, key)
	}
}
