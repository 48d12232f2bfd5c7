package loader

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf/link"
)

// netfilterLinks is the program and priority of each pinned nf_policy link.
func netfilterLinks(tb testing.TB, root string) map[string][2]int64 {
	tb.Helper()
	out := map[string][2]int64{}
	for _, h := range netfilterHooks {
		l, err := link.LoadPinnedLink(filepath.Join(root, linksDir, h.pin), nil)
		if err != nil {
			tb.Fatalf("%s: %v", h.pin, err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil || info.Netfilter() == nil {
			tb.Fatalf("%s: info %+v, %v", h.pin, info, err)
		}
		nf := info.Netfilter()
		if nf.Hook != h.hook || nf.ProtocolFamily != link.NetfilterProtoIPv4 {
			tb.Errorf("%s: attached to hook %d of family %d", h.pin, nf.Hook, nf.ProtocolFamily)
		}
		out[h.pin] = [2]int64{int64(info.Program), int64(nf.Priority)}
	}
	return out
}

// nf_policy goes on both hooks once; a second call changes nothing; a new agent's program
// replaces it although the kernel takes one BPF program per hook and priority (the new link goes
// in beside the old one at the next priority); cleanup removes the links.
func TestEnsureNetfilter(t *testing.T) {
	h := newHost(t)
	d1 := h.load(t, TCAuto)
	var changed bool
	h.do(t, func() (err error) { changed, err = d1.EnsureNetfilter(); return err })
	if !changed {
		t.Fatal("first EnsureNetfilter changed nothing")
	}
	first := netfilterLinks(t, h.root)
	h.do(t, func() (err error) { changed, err = d1.EnsureNetfilter(); return err })
	if again := netfilterLinks(t, h.root); changed || again["netfilter_forward"] != first["netfilter_forward"] {
		t.Fatalf("second EnsureNetfilter changed %v: %v → %v", changed, first, again)
	}

	for round := range 2 { // twice: the priority goes up, and back down
		d2 := h.load(t, TCAuto)
		h.do(t, func() (err error) { changed, err = d2.EnsureNetfilter(); return err })
		now := netfilterLinks(t, h.root)
		want, err := progID(d2.objs.MargayPrograms.NfPolicy)
		if err != nil {
			t.Fatal(err)
		}
		for pin, v := range now {
			if !changed || v[0] != int64(want) || v[1] == first[pin][1] {
				t.Errorf("round %d: %s = program %d priority %d (before %v); want program %d at another priority",
					round, pin, v[0], v[1], first[pin], want)
			}
		}
		first = now
	}

	h.do(t, func() error { return Cleanup(h.root, d1.log) })
	for _, hk := range netfilterHooks {
		if _, err := os.Stat(filepath.Join(h.root, linksDir, hk.pin)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s after cleanup: %v", hk.pin, err)
		}
	}
}
