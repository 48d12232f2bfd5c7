package workload

import (
	"context"
	"errors"
	"fmt"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/ipam"
)

// Del frees what Add took: the host-side veth (deleting it removes the workload side too, so the
// workload namespace is never entered and may already be gone) with Margay's routes through it,
// the endpoint record and the IPAM handle with its addresses. Only spec.ID, spec.Node,
// spec.ContainerID and spec.Network matter.
//
// Del is idempotent: whatever does not exist is skipped. When spec.ContainerID is set and the
// record belongs to another container (a newer sandbox of the same pod, added before the runtime
// deleted the old one), Del does nothing: the veth name and the handle are the new sandbox's now.
// Likewise when spec.Network is set and the record names another network: that network's
// workload is not this one's to delete.
func Del(ctx context.Context, ds *datastore.Client, ipm *ipam.IPAM, spec Spec) error {
	spec = spec.withDefaults()
	if err := spec.validateKey(); err != nil {
		return fmt.Errorf("delete workload %s: %w", spec.ID, err)
	}
	log := spec.logger()
	fail := func(err error) error { return fmt.Errorf("delete workload %s: %w", spec.ID, err) }

	store := ds.Workloads(spec.Node)
	it, err := store.Get(ctx, spec.ID)
	valid := err == nil
	found := valid || errors.Is(err, datastore.ErrMalformed)
	if !found && !errors.Is(err, datastore.ErrNotFound) {
		return fail(err)
	}
	if valid && spec.ContainerID != "" && it.Value.ContainerID != "" && it.Value.ContainerID != spec.ContainerID {
		log.Info("workload belongs to another container; nothing deleted", "container", spec.ContainerID, "current", it.Value.ContainerID)
		return nil
	}
	if valid && spec.Network != "" && it.Value.Network != "" && it.Value.Network != spec.Network {
		log.Info("workload belongs to another network; nothing deleted", "network", spec.Network, "current", it.Value.Network)
		return nil
	}

	host, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fail(fmt.Errorf("open netlink: %w", err))
	}
	defer host.Close()
	names := []string{spec.HostVeth()}
	if valid && it.Value.IfName != "" && it.Value.IfName != names[0] {
		names = append(names, it.Value.IfName)
	}
	for _, name := range names {
		if err := deleteHostVeth(host, name); err != nil {
			return fail(err)
		}
	}

	// The record goes before the address: a crash in between leaves a handle whose workload is
	// gone, which IPAM garbage collection frees; the reverse could hand out an address a record
	// still claims.
	if found {
		err := store.Delete(ctx, spec.ID, it.ModRevision)
		if errors.Is(err, datastore.ErrConflict) {
			return fail(fmt.Errorf("endpoint record changed while deleting, try again: %w", err))
		}
		if err != nil && !errors.Is(err, datastore.ErrNotFound) {
			return fail(err)
		}
	}
	if err := releaseOwnHandle(ctx, ds, ipm, spec); err != nil {
		return fail(err)
	}
	log.Info("deleted workload", "veth", names[0], "had_record", found)
	return nil
}

// releaseOwnHandle releases the workload's IPAM handle unless it belongs to a workload of the
// same ID on another node.
func releaseOwnHandle(ctx context.Context, ds *datastore.Client, ipm *ipam.IPAM, spec Spec) error {
	h, err := ds.Handles().Get(ctx, spec.ID)
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		return nil
	case err == nil && (h.Value.Node != spec.Node || (h.Value.Workload != "" && h.Value.Workload != spec.workloadKey())):
		spec.logger().Warn("IPAM handle belongs to another workload; kept", "handle", spec.ID, "owner", h.Value.Workload, "owner_node", h.Value.Node)
		return nil
	case err != nil && !errors.Is(err, datastore.ErrMalformed):
		return err
	}
	_, err = ipm.ReleaseHandle(ctx, spec.ID)
	return err
}
