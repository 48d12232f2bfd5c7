package agent

import (
	"context"
	"errors"
	"maps"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/margaynet/margay/control/datastore"
	margaymaps "github.com/margaynet/margay/maps"
)

// Collection (orphaned workloads, IPAM garbage, empty blocks) and the conntrack sweep take up to
// seconds — etcd round trips, a walk of the conntrack table — and touch only etcd and the maps,
// not the owner loop's state. They run in goroutines of their own, so that the loop goes on
// programming events meanwhile: the loop hands the collector a copy of the workload records at
// every --gc-interval (skipped while the last collection still runs), and the sweeper works from
// the configured timeouts alone.

// gcJob is what one collection needs of the view: the workload records by "<node>/<id>" and
// their ModRevisions.
type gcJob struct {
	workloads map[string]datastore.Workload
	revisions map[string]int64
}

// housekeeping runs the collector and the sweeper until ctx is done; wait returns once both
// stopped. nl looks up this host's interfaces: a handle made on Run's thread, which is in the
// host's network namespace where other threads of the process need not be.
type housekeeping struct {
	jobs chan gcJob
	wg   sync.WaitGroup
}

func (a *Agent) startHousekeeping(ctx context.Context, nl *netlink.Handle, ct *margaymaps.Conntrack) *housekeeping {
	h := &housekeeping{jobs: make(chan gcJob)}
	h.wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case j := <-h.jobs:
				// While etcd is unreachable there is nothing to collect: skip rather than wait.
				if !a.datastoreAnswers(ctx) {
					continue
				}
				gctx, cancel := context.WithTimeout(ctx, gcTimeout)
				a.collectGarbage(gctx, nl, j)
				cancel()
			}
		}
	})
	h.wg.Go(func() {
		t := time.NewTicker(a.cfg.ConntrackSweepInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				a.pol.sweep(ct)
			}
		}
	})
	return h
}

// collect hands the collector v's workload records, unless it is still busy with the last ones.
func (h *housekeeping) collect(v *view) bool {
	j := gcJob{workloads: maps.Clone(v.workloads), revisions: maps.Clone(v.revisions[kindWorkloads])}
	select {
	case h.jobs <- j:
		return true
	default:
		return false
	}
}

func (h *housekeeping) wait() { h.wg.Wait() }

// gcTimeout bounds one collection.
const gcTimeout = 10 * time.Second

// datastoreAnswers reads this node's record within a second, to tell whether etcd is reachable
// before a collection starts work that would wait for it.
func (a *Agent) datastoreAnswers(ctx context.Context) bool {
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err := a.ds.Nodes().Get(pctx, a.cfg.NodeName)
	if err != nil && !errors.Is(err, datastore.ErrNotFound) && !errors.Is(err, datastore.ErrMalformed) {
		a.log.Warn("etcd does not answer; IPAM garbage collection skipped", "error", err)
		return false
	}
	return true
}

// collectGarbage removes the records of this node's workloads whose veth and netns are gone (a
// runtime that never called CNI DEL), frees the addresses of workloads whose record is gone, and
// gives up empty blocks beyond the first.
func (a *Agent) collectGarbage(ctx context.Context, nl *netlink.Handle, j gcJob) {
	if a.beforeCollect != nil {
		a.beforeCollect(ctx)
	}
	a.collectOrphans(ctx, nl, j)
	freed, err := a.gc.Run(ctx, j.workloads)
	if err != nil {
		a.log.Warn("ipam garbage collection", "error", err)
		return
	}
	if len(freed) > 0 {
		a.log.Info("ipam garbage collection freed addresses", "ips", freed)
	}
	if released, err := a.ipam.ReleaseEmptyBlocks(ctx, a.cfg.NodeName, 1); err != nil {
		a.log.Warn("release empty blocks", "error", err)
	} else if len(released) > 0 {
		a.log.Info("released empty blocks", "blocks", released)
	}
}
