package lab

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/margaynet/margay/control/ctlconfig"
)

// A lab host's margayctl config file reads back as the lab's etcd, the host's node and its pins.
func TestWriteHostConfig(t *testing.T) {
	cfg := Config{StateDir: filepath.Join(t.TempDir(), "state"), Prefix: "t-", BPFFS: "/sys/fs/bpf"}
	cfg.defaults()
	l := &Lab{cfg: cfg}
	if err := l.writeHostConfig(Host{Name: "vm100"}); err != nil {
		t.Fatal(err)
	}
	f, err := ctlconfig.Read(cfg.HostConfig("vm100"))
	if err != nil {
		t.Fatal(err)
	}
	if f.NodeName != "vm100" || f.BPFFSRoot != "/sys/fs/bpf/t-margay-lab/vm100" ||
		!slices.Equal(f.Datastore.Endpoints, []string{"http://198.18.0.2:2379"}) {
		t.Errorf("the config file of vm100 reads as %+v", f)
	}
}
