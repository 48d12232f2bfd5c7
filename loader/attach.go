package loader

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
)

// The bpffs layout under a root: each map pinned as <root>/<map name> (MapPin), each program's
// link as <root>/links/<interface>_<hook> (LinkPin). Every reader of the pins (margayctl, the CNI
// plugin's wait, operators with bpftool) finds them by these two functions or this comment.
const linksDir = "links"

// MapPin is where map name (MargayMap*, e.g. "endpoints") is pinned under root.
func MapPin(root, name string) string { return filepath.Join(root, name) }

// LinkPin is where the link of hook on interface ifname is pinned under root: its presence is
// the program's attachment.
func LinkPin(root, ifname string, hook Hook) string {
	return filepath.Join(root, linksDir, linkName(ifname, hook))
}

// Hook is an attach point of one program.
type Hook string

const (
	HookFromWep    Hook = "from_wep"     // tcx ingress of a cali* veth
	HookToWep      Hook = "to_wep"       // tcx egress of a cali* veth
	HookFromNet    Hook = "from_net"     // tcx ingress of the uplink
	HookXDPFromNet Hook = "xdp_from_net" // XDP on the uplink
)

// Hooks lists every attach point.
var Hooks = []Hook{HookFromWep, HookToWep, HookFromNet, HookXDPFromNet}

// Attachment says how a program is attached to an interface.
type Attachment string

const (
	AttachedTCX    Attachment = "tcx"
	AttachedClsact Attachment = "clsact"
	AttachedXDP    Attachment = "xdp"
)

// ErrNotAttached is returned for a hook that has no program on an interface.
var ErrNotAttached = errors.New("not attached")

// AttachWorkload attaches from_wep and to_wep to a workload's host-side veth.
func (d *Dataplane) AttachWorkload(ifname string) error {
	for _, h := range []Hook{HookFromWep, HookToWep} {
		if _, err := d.Attach(ifname, h); err != nil {
			return err
		}
	}
	return nil
}

// AttachUplink attaches from_net, and with xdp the XDP prefilter, to the uplink.
func (d *Dataplane) AttachUplink(ifname string, xdp bool) error {
	if _, err := d.Attach(ifname, HookFromNet); err != nil {
		return err
	}
	if !xdp {
		return d.Detach(ifname, HookXDPFromNet)
	}
	_, err := d.Attach(ifname, HookXDPFromNet)
	return err
}

// Attach puts the hook's program on the interface. A link pinned by an earlier agent for the same
// interface is adopted and switched to this program atomically, so traffic never sees a gap.
func (d *Dataplane) Attach(ifname string, hook Hook) (Attachment, error) {
	prog, err := d.program(hook)
	if err != nil {
		return "", err
	}
	idx, err := ifindexOf(ifname)
	if err != nil {
		return "", fmt.Errorf("attach %s to %s: %w", hook, ifname, err)
	}
	path := d.linkPath(ifname, hook)

	adopted, err := d.adopt(path, idx, prog)
	if err != nil {
		return "", fmt.Errorf("attach %s to %s: %w", hook, ifname, err)
	}
	if adopted {
		d.log.Debug("adopted pinned link", "interface", ifname, "hook", hook)
		if hook == HookXDPFromNet {
			return AttachedXDP, nil
		}
		return AttachedTCX, nil
	}

	var l link.Link
	switch hook {
	case HookXDPFromNet:
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: idx})
	default:
		if d.tcMode == TCLegacy {
			return d.attachLegacy(idx, ifname, hook, prog)
		}
		l, err = link.AttachTCX(link.TCXOptions{Interface: idx, Program: prog, Attach: tcxAttachType(hook)})
		if errors.Is(err, ebpf.ErrNotSupported) && d.tcMode == TCAuto {
			d.log.Info("kernel lacks tcx, using a clsact qdisc", "interface", ifname, "hook", hook)
			return d.attachLegacy(idx, ifname, hook, prog)
		}
	}
	if err != nil {
		return "", fmt.Errorf("attach %s to %s: %w", hook, ifname, err)
	}
	defer l.Close()
	if err := l.Pin(path); err != nil {
		return "", fmt.Errorf("pin %s link of %s: %w", hook, ifname, err)
	}
	if hook != HookXDPFromNet {
		// A clsact filter from an older agent or a kernel upgrade would run the program twice.
		if err := deleteLegacy(idx, hook); err != nil {
			d.log.Warn("could not remove clsact filter after tcx attach", "interface", ifname, "hook", hook, "error", err)
		}
		return AttachedTCX, nil
	}
	return AttachedXDP, nil
}

// Ensure attaches the hook's program unless exactly this program is attached already, and
// reports whether it changed anything. Reconcilers call it on every pass.
func (d *Dataplane) Ensure(ifname string, hook Hook) (bool, error) {
	idx, err := ifindexOf(ifname)
	if err != nil {
		return false, fmt.Errorf("attach %s to %s: %w", hook, ifname, err)
	}
	return d.EnsureOn(ifname, idx, hook)
}

// EnsureOn is Ensure for a caller that knows the interface's index.
func (d *Dataplane) EnsureOn(ifname string, ifindex int, hook Hook) (bool, error) {
	prog, err := d.program(hook)
	if err != nil {
		return false, err
	}
	want, err := d.progID(prog)
	if err != nil {
		return false, err
	}
	if l, err := link.LoadPinnedLink(d.linkPath(ifname, hook), nil); err == nil {
		info, ierr := l.Info()
		l.Close()
		if ierr == nil && info.Program == want && infoIfindex(info) == ifindex {
			return false, nil
		}
	} else if hook != HookXDPFromNet {
		fs, err := legacyFilters(ifindex, hook)
		if err == nil && len(fs) == 1 && fs[0].(*netlink.BpfFilter).Id == int(want) {
			return false, nil
		}
	}
	if _, err := d.Attach(ifname, hook); err != nil {
		return false, err
	}
	return true, nil
}

// progID is the kernel's id of p, one of d's programs.
func (d *Dataplane) progID(p *ebpf.Program) (ebpf.ProgramID, error) {
	d.idsMu.Lock()
	defer d.idsMu.Unlock()
	if id, ok := d.ids[p]; ok {
		return id, nil
	}
	id, err := progID(p)
	if err != nil {
		return 0, err
	}
	if d.ids == nil {
		d.ids = map[*ebpf.Program]ebpf.ProgramID{}
	}
	d.ids[p] = id
	return id, nil
}

func progID(p *ebpf.Program) (ebpf.ProgramID, error) {
	info, err := p.Info()
	if err != nil {
		return 0, fmt.Errorf("program info: %w", err)
	}
	id, ok := info.ID()
	if !ok {
		return 0, errors.New("program info: kernel reports no ID")
	}
	return id, nil
}

// adopt updates a link pinned at path to prog when it still belongs to the interface with index
// ifindex. A pin whose interface is gone or was re-created is removed.
func (d *Dataplane) adopt(path string, ifindex int, prog *ebpf.Program) (bool, error) {
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		d.log.Warn("removing unusable link pin", "path", path, "error", err)
		return false, removePin(path)
	}
	defer l.Close()
	if linkIfindex(l) != ifindex {
		d.log.Info("removing stale link pin", "path", path)
		return false, l.Unpin()
	}
	if err := l.Update(prog); err != nil {
		return false, fmt.Errorf("update pinned link: %w", err)
	}
	return true, nil
}

// linkIfindex is the interface a tcx or XDP link is attached to, 0 when it is defunct.
func linkIfindex(l link.Link) int {
	info, err := l.Info()
	if err != nil {
		return 0
	}
	return infoIfindex(info)
}

// infoIfindex is the interface a tcx or XDP link is on; 0 for other links.
func infoIfindex(info *link.Info) int {
	if tcx := info.TCX(); tcx != nil {
		return int(tcx.Ifindex)
	}
	if xdp := info.XDP(); xdp != nil {
		return int(xdp.Ifindex)
	}
	return 0
}

// Detach removes the hook's program from the interface; a hook with nothing attached is fine.
func (d *Dataplane) Detach(ifname string, hook Hook) error {
	return detach(d.root, ifname, hook)
}

// DetachInterface removes every Margay program from the interface.
func (d *Dataplane) DetachInterface(ifname string) error {
	var errs []error
	for _, h := range Hooks {
		errs = append(errs, d.Detach(ifname, h))
	}
	return errors.Join(errs...)
}

func detach(root, ifname string, hook Hook) error {
	path := LinkPin(root, ifname, hook)
	l, err := link.LoadPinnedLink(path, nil)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		if err := removePin(path); err != nil {
			return err
		}
	default:
		// Unpin drops the last reference once closed; the kernel detaches the program then.
		uerr := l.Unpin()
		l.Close()
		if uerr != nil {
			return fmt.Errorf("detach %s from %s: %w", hook, ifname, uerr)
		}
	}
	if hook == HookXDPFromNet {
		return nil
	}
	idx, err := ifindexOf(ifname)
	if err != nil {
		return nil // the interface is gone, and its filters with it
	}
	return deleteLegacy(idx, hook)
}

// Attached reports how the hook's program is attached to the interface, or ErrNotAttached.
func (d *Dataplane) Attached(ifname string, hook Hook) (Attachment, error) {
	idx, err := ifindexOf(ifname)
	if err != nil {
		return "", fmt.Errorf("look up %s: %w", ifname, err)
	}
	l, err := link.LoadPinnedLink(d.linkPath(ifname, hook), nil)
	if err == nil {
		defer l.Close()
		if linkIfindex(l) == idx {
			if hook == HookXDPFromNet {
				return AttachedXDP, nil
			}
			return AttachedTCX, nil
		}
	}
	if hook != HookXDPFromNet {
		ok, err := hasLegacy(idx, hook)
		if err != nil {
			return "", err
		}
		if ok {
			return AttachedClsact, nil
		}
	}
	return "", ErrNotAttached
}

// detachAllLinks unpins, and so detaches, every link pinned under root.
func detachAllLinks(root string, log *slog.Logger) error {
	entries, err := os.ReadDir(filepath.Join(root, linksDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list pinned links: %w", err)
	}
	var errs []error
	for _, e := range entries {
		path := filepath.Join(root, linksDir, e.Name())
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			errs = append(errs, removePin(path))
			continue
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin %s: %w", path, err))
		}
		l.Close()
		log.Info("detached", "link", e.Name())
	}
	return errors.Join(errs...)
}

func (d *Dataplane) program(hook Hook) (*ebpf.Program, error) {
	p := d.objs.MargayPrograms
	switch hook {
	case HookFromWep:
		return p.FromWep, nil
	case HookToWep:
		return p.ToWep, nil
	case HookFromNet:
		return p.FromNet, nil
	case HookXDPFromNet:
		return p.XdpFromNet, nil
	}
	return nil, fmt.Errorf("unknown hook %q", hook)
}

func tcxAttachType(hook Hook) ebpf.AttachType {
	if hook == HookToWep {
		return ebpf.AttachTCXEgress
	}
	return ebpf.AttachTCXIngress
}

func (d *Dataplane) linkPath(ifname string, hook Hook) string {
	return LinkPin(d.root, ifname, hook)
}

// linkName is the pin of a link: <interface>_<hook>, as operators find it under links/.
func linkName(ifname string, hook Hook) string {
	return ifname + "_" + string(hook)
}

// LinkPins lists the link pins under root by interface and hook, for inspection.
func LinkPins(root string) (map[string][]Hook, error) {
	entries, err := os.ReadDir(filepath.Join(root, linksDir))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("list pinned links: %w", err)
	}
	out := make(map[string][]Hook)
	for _, e := range entries {
		// Longest hook names first: "_xdp_from_net" also ends in "_from_net".
		for _, h := range []Hook{HookXDPFromNet, HookFromWep, HookToWep, HookFromNet} {
			if ifname, ok := strings.CutSuffix(e.Name(), "_"+string(h)); ok {
				out[ifname] = append(out[ifname], h)
				break
			}
		}
	}
	return out, nil
}

// ifindexOf resolves an interface of the calling thread's network namespace with one netlink
// request (net.InterfaceByName dumps every interface, which reconcilers cannot afford per call).
func ifindexOf(name string) (int, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return 0, err
	}
	return l.Attrs().Index, nil
}

func removePin(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove pin %s: %w", path, err)
	}
	return nil
}
