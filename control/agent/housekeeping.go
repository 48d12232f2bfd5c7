package agent

import (
	"context"
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
