package loader

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/tests/netns"
)

func TestLoad(t *testing.T) {
	d, err := Load(WithRoot(netns.BPFFS(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
}

// A root that is not on bpffs gets a bpffs mounted on it (outside /sys/fs/bpf).
func TestEnsureBPFFSMounts(t *testing.T) {
	root := filepath.Join(t.TempDir(), "margay")
	if err := EnsureBPFFS(root); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(root, unix.MNT_DETACH) })
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		t.Fatalf("statfs %s: type %#x, %v; want bpffs", root, st.Type, err)
	}
	if fi, err := os.Stat(filepath.Join(root, "links")); err != nil || !fi.IsDir() {
		t.Fatalf("links directory: %v", err)
	}
	// Idempotent: a second call finds bpffs and mounts nothing more.
	if err := EnsureBPFFS(root); err != nil {
		t.Fatal(err)
	}
}

func TestLoadRejectsRelativeRoot(t *testing.T) {
	if _, err := Load(WithRoot("relative/dir")); err == nil {
		t.Fatal("Load accepted a relative root")
	}
}
