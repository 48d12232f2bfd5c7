package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// DefaultRoot is where maps and links are pinned unless told otherwise.
const DefaultRoot = "/sys/fs/bpf/margay"

// EnsureBPFFS makes root a directory on a bpf filesystem. When the nearest existing ancestor of
// root is not on bpffs, it mounts one: at /sys/fs/bpf when root lies below it (what every other
// BPF tool expects), else at root itself.
func EnsureBPFFS(root string) error {
	root = filepath.Clean(root)
	onBPF, err := nearestIsBPFFS(root)
	if err != nil {
		return err
	}
	if !onBPF {
		mnt := root
		if strings.HasPrefix(root, "/sys/fs/bpf/") {
			mnt = "/sys/fs/bpf"
		}
		if err := os.MkdirAll(mnt, 0o755); err != nil {
			return fmt.Errorf("create bpffs mount point %s: %w", mnt, err)
		}
		if err := unix.Mount("bpffs", mnt, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount bpffs at %s: %w", mnt, err)
		}
	}
	if err := os.MkdirAll(filepath.Join(root, linksDir), 0o700); err != nil {
		return fmt.Errorf("create pin directory %s: %w", root, err)
	}
	return nil
}

// nearestIsBPFFS reports whether path, or its nearest existing ancestor, is on a bpf filesystem.
func nearestIsBPFFS(path string) (bool, error) {
	for p := path; ; p = filepath.Dir(p) {
		var st unix.Statfs_t
		err := unix.Statfs(p, &st)
		if err == nil {
			return st.Type == unix.BPF_FS_MAGIC, nil
		}
		if !errors.Is(err, unix.ENOENT) {
			return false, fmt.Errorf("statfs %s: %w", p, err)
		}
		if p == "/" {
			return false, nil
		}
	}
}
