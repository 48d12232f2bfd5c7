package loader

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Kernels without tcx (< 6.6) get the TC programs as direct-action cls_bpf filters on a clsact
// qdisc. The filter, not a pin, keeps the program attached; it is found again by its name.

const (
	legacyPriority = 1
	legacyHandle   = 1
	legacyPrefix   = "margay_"
)

func legacyName(hook Hook) string { return legacyPrefix + string(hook) }

func legacyParent(hook Hook) uint32 {
	if hook == HookToWep {
		return netlink.HANDLE_MIN_EGRESS
	}
	return netlink.HANDLE_MIN_INGRESS
}

func (d *Dataplane) attachLegacy(ifindex int, ifname string, hook Hook, prog *ebpf.Program) (Attachment, error) {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: ifindex,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
	if err := netlink.QdiscReplace(qdisc); err != nil {
		return "", fmt.Errorf("add clsact qdisc to %s: %w", ifname, err)
	}
	filter := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    legacyParent(hook),
			Handle:    legacyHandle,
			Priority:  legacyPriority,
			Protocol:  unix.ETH_P_ALL,
		},
		Fd:           prog.FD(),
		Name:         legacyName(hook),
		DirectAction: true,
	}
	// Replace swaps the program of an existing filter in one step: no gap for traffic.
	if err := netlink.FilterReplace(filter); err != nil {
		return "", fmt.Errorf("attach %s to %s with clsact: %w", hook, ifname, err)
	}
	return AttachedClsact, nil
}

func legacyFilters(ifindex int, hook Hook) ([]netlink.Filter, error) {
	lnk, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, nil
		}
		return nil, fmt.Errorf("look up interface %d: %w", ifindex, err)
	}
	filters, err := netlink.FilterList(lnk, legacyParent(hook))
	if err != nil {
		// No clsact qdisc: nothing attached.
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil, nil
		}
		return nil, fmt.Errorf("list filters of %s: %w", lnk.Attrs().Name, err)
	}
	var ours []netlink.Filter
	for _, f := range filters {
		if bf, ok := f.(*netlink.BpfFilter); ok && bf.Name == legacyName(hook) {
			ours = append(ours, f)
		}
	}
	return ours, nil
}

func hasLegacy(ifindex int, hook Hook) (bool, error) {
	fs, err := legacyFilters(ifindex, hook)
	return len(fs) > 0, err
}

func deleteLegacy(ifindex int, hook Hook) error {
	fs, err := legacyFilters(ifindex, hook)
	if err != nil {
		return err
	}
	for _, f := range fs {
		if err := netlink.FilterDel(f); err != nil {
			return fmt.Errorf("delete clsact filter %s: %w", legacyName(hook), err)
		}
	}
	return nil
}

// detachAllLegacy removes Margay's clsact filters from every interface of this namespace.
func detachAllLegacy(log *slog.Logger) error {
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list interfaces: %w", err)
	}
	var errs []error
	for _, l := range links {
		for _, h := range []Hook{HookFromWep, HookToWep, HookFromNet} {
			fs, err := legacyFilters(l.Attrs().Index, h)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for _, f := range fs {
				if err := netlink.FilterDel(f); err != nil {
					errs = append(errs, fmt.Errorf("delete clsact filter on %s: %w", l.Attrs().Name, err))
					continue
				}
				log.Info("detached", "interface", l.Attrs().Name, "hook", h, "attachment", AttachedClsact)
			}
		}
	}
	return errors.Join(errs...)
}
