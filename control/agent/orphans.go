package agent

import (
	"context"
	"errors"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/hostconv"
)

// A workload whose network namespace was deleted without CNI DEL (a runtime that crashed, a
// container torn down by hand with `ip netns del`) loses its veth with the namespace. Its record
// would stay forever: its address never freed (IPAM collects only handles without a record) and
// the agent looking for its interface on every pass. collectOrphans removes such records; IPAM
// garbage collection then frees the address at its next two runs, and the reconcile pass that
// the record's deletion triggers removes the endpoint, the routes and the link pins.
//
// An orphan is a workload of this node whose host-side veth does not exist and whose namespace
// (the record's netns path) is gone too. The namespace check keeps the record of a container
// that still runs after its veth was deleted by hand: that one is broken, but its address is in
// use, and handing it out again would make two workloads answer for it; it is logged instead.
// A record without a netns path (written by other tools) is judged by its veth alone.
//
// The race with CNI ADD: ADD creates the veth before it writes the record, so a new workload is
// never seen without its veth. A repeated ADD for the same ID (a new sandbox of a pod) may delete
// a stale veth and create it again, and writes the record with the new netns afterwards. A
// workload is therefore removed only when it looked orphaned at two collections in a row (one
// --gc-interval apart, a minute by default, far longer than an ADD) with the same record
// (ModRevision), and the delete is a compare-and-swap on that ModRevision: a record that ADD
// rewrote in between is never removed. If ADD's rewrite comes after the delete, it simply
// creates the record again; its address is safe, because IPAM frees a handle only when its
// record was missing at two collections in a row too.

// collectOrphans removes the records of this node's orphaned workloads (see above), given the
// records the loop handed over; nl looks up interfaces in the host's network namespace.
func (a *Agent) collectOrphans(ctx context.Context, nl *netlink.Handle, j gcJob) {
	prefix := hostconv.WorkloadKey(a.cfg.NodeName, "")
	revs := j.revisions
	suspects := map[string]int64{}
	for key, w := range j.workloads {
		id, ok := strings.CutPrefix(key, prefix)
		if !ok || w.IfName == "" {
			continue // another node's, or nothing to look for
		}
		if _, err := nl.LinkByName(w.IfName); err == nil || !isLinkNotFound(err) {
			continue // the veth exists (or we cannot tell)
		}
		switch alive, err := netnsAlive(w.Netns); {
		case err != nil:
			a.log.Warn("workload without its veth: cannot tell whether its netns exists; keeping it",
				"workload", key, "interface", w.IfName, "netns", w.Netns, "error", err)
			continue
		case alive:
			if a.orphans[key] == 0 {
				a.log.Warn("workload's veth is gone but its netns exists; keeping it (CNI ADD again, or DEL, to repair)",
					"workload", key, "interface", w.IfName, "netns", w.Netns)
			}
			suspects[key] = -1 // logged once; never removed while its netns lives
			continue
		}
		rev := revs[key]
		if prev, ok := a.orphans[key]; !ok || prev != rev || rev == 0 {
			suspects[key] = rev
			continue
		}
		err := a.ds.Workloads(a.cfg.NodeName).Delete(ctx, id, rev)
		switch {
		case err == nil:
			a.log.Info("removed workload whose veth and netns are gone (no CNI DEL)", "workload", key,
				"interface", w.IfName, "netns", w.Netns, "ips", w.IPv4)
			a.m.orphansRemoved.Inc()
		case errors.Is(err, datastore.ErrNotFound):
		case errors.Is(err, datastore.ErrConflict):
			a.log.Info("workload record changed while collecting it; kept", "workload", key)
		default:
			a.log.Warn("remove orphaned workload", "workload", key, "error", err)
			suspects[key] = rev // try again next time
		}
	}
	a.orphans = suspects
}

// netnsAlive reports whether path is a network namespace: a bind mount of one (`ip netns`,
// container runtimes) or a /proc/<pid>/ns/net of a live process. A missing path, or a file that
// is no longer a namespace (a runtime may leave the empty mount point), means it is gone.
func netnsAlive(path string) (bool, error) {
	if path == "" {
		return false, nil
	}
	var st unix.Statfs_t
	err := unix.Statfs(path, &st)
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ESRCH):
		return false, nil
	case err != nil:
		return false, err
	}
	return st.Type == unix.NSFS_MAGIC, nil
}

func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}
