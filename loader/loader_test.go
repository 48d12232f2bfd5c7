package loader

import (
	"testing"

	"github.com/margaynet/margay/tests/netns"
)

func TestLoad(t *testing.T) {
	d, err := Load(WithRoot(netns.BPFFS(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
}
