package loader

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/margaynet/margay/tests/netns"
)

// host is a namespace with a workload-style veth (cali side here) and an uplink veth.
type host struct {
	ns     *netns.NS
	peer   *netns.NS
	root   string
	wep    string
	uplink string
}

func newHost(tb testing.TB) *host {
	tb.Helper()
	h := &host{ns: netns.New(tb, "mgyld-"), peer: netns.New(tb, "mgyldp-"), root: netns.BPFFS(tb),
		wep: "cali0123456789a", uplink: "ens32"}
	netns.Veth(tb, h.ns, h.wep, h.peer, "eth0")
	netns.Veth(tb, h.ns, h.uplink, h.peer, "ens32")
	return h
}

func (h *host) load(tb testing.TB, mode TCMode) *Dataplane {
	tb.Helper()
	d, err := Load(WithRoot(h.root), WithTCMode(mode))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	return d
}

// do runs fn inside the host namespace and fails the test on error.
func (h *host) do(tb testing.TB, fn func() error) {
	tb.Helper()
	if err := h.ns.Do(fn); err != nil {
		tb.Fatal(err)
	}
}

func (h *host) ifindex(tb testing.TB, name string) int {
	return h.ns.Link(tb, name).Attrs().Index
}

// tcxPrograms lists the programs on an interface's tcx hook, as the kernel reports them.
func (h *host) tcxPrograms(tb testing.TB, ifname string, at ebpf.AttachType) []link.AttachedProgram {
	tb.Helper()
	var res *link.QueryResult
	h.do(tb, func() (err error) {
		res, err = link.QueryPrograms(link.QueryOptions{Target: h.ifindex(tb, ifname), Attach: at})
		return err
	})
	return res.Programs
}

func testProgID(tb testing.TB, p *ebpf.Program) ebpf.ProgramID {
	tb.Helper()
	info, err := p.Info()
	if err != nil {
		tb.Fatal(err)
	}
	id, _ := info.ID()
	return id
}

func TestAttachDetach(t *testing.T) {
	for _, tc := range []struct {
		mode TCMode
		want Attachment
	}{
		{TCX, AttachedTCX},
		{TCAuto, AttachedTCX},
		{TCLegacy, AttachedClsact},
	} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			h := newHost(t)
			d := h.load(t, tc.mode)
			h.do(t, func() error {
				if err := d.AttachWorkload(h.wep); err != nil {
					return err
				}
				return d.AttachUplink(h.uplink, true)
			})
			check := func(ifname string, hook Hook, want Attachment) {
				t.Helper()
				var got Attachment
				var err error
				h.do(t, func() error { got, err = d.Attached(ifname, hook); return nil })
				if want == "" {
					if !errors.Is(err, ErrNotAttached) {
						t.Errorf("%s %s: attached as %q (err %v), want none", ifname, hook, got, err)
					}
					return
				}
				if err != nil || got != want {
					t.Errorf("%s %s: attached as %q (err %v), want %q", ifname, hook, got, err, want)
				}
			}
			check(h.wep, HookFromWep, tc.want)
			check(h.wep, HookToWep, tc.want)
			check(h.uplink, HookFromNet, tc.want)
			check(h.uplink, HookXDPFromNet, AttachedXDP)
			check(h.wep, HookXDPFromNet, "")

			// The kernel runs exactly one of our programs per hook.
			if tc.want == AttachedTCX {
				progs := h.tcxPrograms(t, h.wep, ebpf.AttachTCXIngress)
				if len(progs) != 1 || progs[0].ID != testProgID(t, d.Programs().FromWep) {
					t.Errorf("tcx ingress of %s runs %+v, want only from_wep", h.wep, progs)
				}
				if _, err := os.Stat(filepath.Join(h.root, "links", h.wep+"_from_wep")); err != nil {
					t.Errorf("link pin: %v", err)
				}
			}

			// Attaching again is idempotent: still one program per hook.
			h.do(t, func() error { return d.AttachWorkload(h.wep) })
			if tc.want == AttachedTCX {
				if progs := h.tcxPrograms(t, h.wep, ebpf.AttachTCXIngress); len(progs) != 1 {
					t.Errorf("after re-attach, tcx ingress runs %d programs, want 1", len(progs))
				}
			} else {
				h.do(t, func() error {
					fs, err := legacyFilters(h.ifindex(t, h.wep), HookFromWep)
					if len(fs) != 1 {
						t.Errorf("after re-attach, %d clsact filters, want 1", len(fs))
					}
					return err
				})
			}

			h.do(t, func() error { return errors.Join(d.DetachInterface(h.wep), d.DetachInterface(h.uplink)) })
			for _, hk := range Hooks {
				check(h.wep, hk, "")
				check(h.uplink, hk, "")
			}
			pins, err := LinkPins(h.root)
			if err != nil || len(pins) != 0 {
				t.Errorf("link pins left after detach: %v (err %v)", pins, err)
			}
		})
	}
}

// A new agent adopts the pinned links of the one before and switches them to its own programs in
// place: the hook is never empty.
func TestAdoptPinnedLinks(t *testing.T) {
	h := newHost(t)
	first := h.load(t, TCX)
	h.do(t, func() error {
		if err := first.AttachWorkload(h.wep); err != nil {
			return err
		}
		return first.AttachUplink(h.uplink, true)
	})
	before := h.tcxPrograms(t, h.wep, ebpf.AttachTCXIngress)
	firstID := testProgID(t, first.Programs().FromWep)
	first.Close() // the agent exits; its pinned links keep the programs attached

	if got := h.tcxPrograms(t, h.wep, ebpf.AttachTCXIngress); len(got) != 1 || got[0].ID != firstID {
		t.Fatalf("after the agent exited, tcx ingress runs %+v, want from_wep %d", got, firstID)
	}

	second := h.load(t, TCX)
	h.do(t, func() error {
		if err := second.AttachWorkload(h.wep); err != nil {
			return err
		}
		return second.AttachUplink(h.uplink, true)
	})
	after := h.tcxPrograms(t, h.wep, ebpf.AttachTCXIngress)
	if len(after) != 1 || after[0].ID != testProgID(t, second.Programs().FromWep) {
		t.Fatalf("after adoption, tcx ingress runs %+v, want only the new from_wep", after)
	}
	// Same link, new program: the link ID did not change.
	beforeLink, _ := before[0].LinkID()
	afterLink, ok := after[0].LinkID()
	if !ok || beforeLink != afterLink {
		t.Errorf("link replaced (%d → %d), want the pinned link updated in place", beforeLink, afterLink)
	}

	// The XDP link was adopted as well.
	l, err := link.LoadPinnedLink(filepath.Join(h.root, "links", h.uplink+"_xdp_from_net"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	if info.Program != testProgID(t, second.Programs().XdpFromNet) {
		t.Errorf("xdp link runs program %d, want the new xdp_from_net", info.Program)
	}
}

// A pin whose interface was deleted and re-created under the same name is stale: it is replaced
// by a link on the new interface.
func TestStaleLinkPin(t *testing.T) {
	h := newHost(t)
	d := h.load(t, TCX)
	h.do(t, func() error { return d.AttachUplink(h.uplink, false) })

	old := h.ns.Link(t, h.uplink)
	if err := h.ns.Netlink().LinkDel(old); err != nil {
		t.Fatal(err)
	}
	netns.Veth(t, h.ns, h.uplink, h.peer, "ens32")

	h.do(t, func() error { return d.AttachUplink(h.uplink, false) })
	progs := h.tcxPrograms(t, h.uplink, ebpf.AttachTCXIngress)
	if len(progs) != 1 || progs[0].ID != testProgID(t, d.Programs().FromNet) {
		t.Fatalf("re-created uplink runs %+v, want from_net", progs)
	}
}

func TestCleanup(t *testing.T) {
	for _, mode := range []TCMode{TCX, TCLegacy} {
		t.Run(mode.String(), func(t *testing.T) {
			h := newHost(t)
			d := h.load(t, mode)
			h.do(t, func() error {
				if err := d.AttachWorkload(h.wep); err != nil {
					return err
				}
				return d.AttachUplink(h.uplink, true)
			})
			d.Close()
			h.do(t, func() error { return Cleanup(h.root, nil) })

			if _, err := os.Stat(h.root); !os.IsNotExist(err) {
				t.Errorf("root %s still exists after cleanup (err %v)", h.root, err)
			}
			for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
				if progs := h.tcxPrograms(t, h.wep, at); len(progs) != 0 {
					t.Errorf("%s still runs %+v after cleanup", h.wep, progs)
				}
			}
			h.do(t, func() error {
				for _, hk := range []Hook{HookFromWep, HookToWep} {
					if fs, _ := legacyFilters(h.ifindex(t, h.wep), hk); len(fs) != 0 {
						t.Errorf("clsact filter %s left on %s", hk, h.wep)
					}
				}
				if fs, _ := legacyFilters(h.ifindex(t, h.uplink), HookFromNet); len(fs) != 0 {
					t.Errorf("clsact filter from_net left on %s", h.uplink)
				}
				return nil
			})
			if xdp := h.ns.Link(t, h.uplink).Attrs().Xdp; xdp != nil && xdp.Attached {
				t.Errorf("XDP still attached to %s after cleanup", h.uplink)
			}
		})
	}
}

// Ensure changes nothing when the program is in place, and repairs a hook emptied behind its back.
func TestEnsure(t *testing.T) {
	for _, mode := range []TCMode{TCX, TCLegacy} {
		t.Run(mode.String(), func(t *testing.T) {
			h := newHost(t)
			d := h.load(t, mode)
			ensure := func(hook Hook) bool {
				t.Helper()
				var changed bool
				h.do(t, func() (err error) { changed, err = d.Ensure(h.wep, hook); return err })
				return changed
			}
			if !ensure(HookFromWep) {
				t.Error("first Ensure reported no change")
			}
			if ensure(HookFromWep) {
				t.Error("second Ensure changed something")
			}
			h.do(t, func() error { return d.Detach(h.wep, HookFromWep) })
			if !ensure(HookFromWep) {
				t.Error("Ensure after a detach reported no change")
			}
			var got Attachment
			h.do(t, func() (err error) { got, err = d.Attached(h.wep, HookFromWep); return err })
			if want := map[TCMode]Attachment{TCX: AttachedTCX, TCLegacy: AttachedClsact}[mode]; got != want {
				t.Errorf("attached as %q, want %q", got, want)
			}
			// A newer agent's programs replace the old ones.
			d2 := h.load(t, mode)
			var changed bool
			h.do(t, func() (err error) { changed, err = d2.Ensure(h.wep, HookFromWep); return err })
			if !changed {
				t.Error("Ensure with new programs reported no change")
			}
		})
	}
}
