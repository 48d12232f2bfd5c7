package k8stest

import (
	"strings"
	"testing"
)

// Without the binaries the error says how to get them.
func TestStartWithoutBinary(t *testing.T) {
	t.Setenv(BinDirEnv, t.TempDir())
	_, err := start(t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "make k8s-bins") || !strings.Contains(err.Error(), BinDirEnv) {
		t.Errorf("start without kube-apiserver: %v, want an error naming make k8s-bins and %s", err, BinDirEnv)
	}
}
