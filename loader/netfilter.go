package loader

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/cilium/ebpf/link"
)

// NetfilterPriority is where nf_policy runs in netfilter's forward and local-in hooks: after
// conntrack, the NAT of the packet's way in (prerouting DNAT is done before either hook) and
// the filter table (0), so that it sees what Calico's iptables chains see. The kernel takes one
// BPF program per hook and priority, so a replacement goes in at the next priority up, or back
// at this one, before the old link goes.
const NetfilterPriority = 10

// netfilterHooks are the hooks nf_policy is attached to, by the name of their link pin.
var netfilterHooks = []struct {
	pin  string
	hook link.NetfilterInetHook
}{
	{"netfilter_forward", link.NetfilterInetForward},
	{"netfilter_local_in", link.NetfilterInetLocalIn},
}

// EnsureNetfilter attaches nf_policy to netfilter's IPv4 forward and local-in hooks of the
// calling thread's network namespace, unless exactly this program is attached already, and
// reports whether it changed anything. A link pinned by an earlier agent is replaced by a new
// one before it is removed (netfilter links cannot switch programs), so the hook never runs
// without a policy program. The links are pinned under links/, so they outlive the agent.
func (d *Dataplane) EnsureNetfilter() (bool, error) {
	prog := d.objs.MargayPrograms.NfPolicy
	want, err := d.progID(prog)
	if err != nil {
		return false, err
	}
	changed := false
	for _, h := range netfilterHooks {
		path := filepath.Join(d.root, linksDir, h.pin)
		old, err := link.LoadPinnedLink(path, nil)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			old = nil
		case err != nil:
			d.log.Warn("removing unusable link pin", "path", path, "error", err)
			if err := removePin(path); err != nil {
				return changed, err
			}
			old = nil
		}
		priority := int32(NetfilterPriority)
		if old != nil {
			info, ierr := old.Info()
			if ierr == nil && info.Program == want {
				old.Close()
				continue
			}
			if ierr == nil && info.Netfilter() != nil && info.Netfilter().Priority == priority {
				priority++
			}
		}
		l, err := link.AttachNetfilter(link.NetfilterOptions{Program: prog, ProtocolFamily: link.NetfilterProtoIPv4,
			Hook: h.hook, Priority: priority})
		if err != nil {
			if old != nil {
				old.Close()
			}
			return changed, fmt.Errorf("attach nf_policy to %s: %w", h.pin, err)
		}
		if old != nil {
			err = old.Unpin()
			old.Close()
			if err != nil {
				l.Close()
				return changed, fmt.Errorf("unpin %s: %w", path, err)
			}
		}
		err = l.Pin(path)
		l.Close()
		if err != nil {
			return changed, fmt.Errorf("pin %s: %w", path, err)
		}
		changed = true
	}
	return changed, nil
}
