package maps

import (
	"errors"
	"fmt"
	"sort"

	"github.com/cilium/ebpf"

	"github.com/margaynet/margay/loader"
)

// Counter is what one hook did on one interface for one reason, summed over all CPUs.
type Counter struct {
	Ifindex uint32 `json:"ifindex"`
	Hook    Hook   `json:"-"`
	Reason  Reason `json:"-"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Counters is the per-CPU counters map.
type Counters struct{ m *ebpf.Map }

// NewCounters wraps a loaded counters map.
func NewCounters(m *ebpf.Map) *Counters { return &Counters{m: m} }

// List returns every counter, summed over CPUs, sorted by ifindex, hook and reason.
func (c *Counters) List() ([]Counter, error) {
	var (
		k      loader.MargayCounterKey
		perCPU []loader.MargayCounterValue
		out    []Counter
	)
	it := c.m.Iterate()
	for it.Next(&k, &perCPU) {
		ct := Counter{Ifindex: k.Ifindex, Hook: Hook(k.Hook), Reason: Reason(k.Reason)}
		for _, v := range perCPU {
			ct.Packets += v.Packets
			ct.Bytes += v.Bytes
		}
		out = append(out, ct)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list counters: %w", err)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Ifindex != b.Ifindex {
			return a.Ifindex < b.Ifindex
		}
		if a.Hook != b.Hook {
			return a.Hook < b.Hook
		}
		return a.Reason < b.Reason
	})
	return out, nil
}

// Get returns one counter, summed over CPUs; zero when the dataplane never counted it.
func (c *Counters) Get(ifindex uint32, hook Hook, reason Reason) (Counter, error) {
	k := loader.MargayCounterKey{Ifindex: ifindex, Hook: loader.MargayHook(hook), Reason: loader.MargayReason(reason)}
	ct := Counter{Ifindex: ifindex, Hook: hook, Reason: reason}
	var perCPU []loader.MargayCounterValue
	if err := c.m.Lookup(&k, &perCPU); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return ct, nil
		}
		return ct, fmt.Errorf("get counter: %w", err)
	}
	for _, v := range perCPU {
		ct.Packets += v.Packets
		ct.Bytes += v.Bytes
	}
	return ct, nil
}

// Prune removes the counters of the interfaces keep refuses (asked once per interface), in one
// walk of the map's keys, and returns the interfaces whose counters went.
func (c *Counters) Prune(keep func(ifindex uint32) bool) ([]uint32, error) {
	kept := map[uint32]bool{}
	var gone []loader.MargayCounterKey
	var goneIfs []uint32
	var k loader.MargayCounterKey
	var next loader.MargayCounterKey
	cur := any(nil) // nil: the first key
	for {
		if err := c.m.NextKey(cur, &next); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				break
			}
			return nil, fmt.Errorf("list counters: %w", err)
		}
		k = next
		cur = &k
		ok, seen := kept[k.Ifindex]
		if !seen {
			ok = keep(k.Ifindex)
			kept[k.Ifindex] = ok
			if !ok {
				goneIfs = append(goneIfs, k.Ifindex)
			}
		}
		if !ok {
			gone = append(gone, k)
		}
	}
	for i := range gone {
		if err := c.m.Delete(&gone[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return goneIfs, fmt.Errorf("delete counters of %d: %w", gone[i].Ifindex, err)
		}
	}
	return goneIfs, nil
}

// Hooks as in bpf/include/types.h.
const (
	HookFromWep    = Hook(loader.MargayHookHOOK_FROM_WEP)
	HookToWep      = Hook(loader.MargayHookHOOK_TO_WEP)
	HookFromNet    = Hook(loader.MargayHookHOOK_FROM_NET)
	HookXDPFromNet = Hook(loader.MargayHookHOOK_XDP_FROM_NET)
	HookNFPolicy   = Hook(loader.MargayHookHOOK_NF_POLICY)
)
