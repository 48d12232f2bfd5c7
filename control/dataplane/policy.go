package dataplane

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/margaynet/margay/maps"
)

// installed is what the policy maps hold before a pass: the programs endpoints point at, the
// identities policy_ips hands out, and the entries.
type installed struct {
	programs, identities map[uint32]bool
	ips                  map[netip.Prefix]uint32
	entries              map[maps.PolicyKey]maps.PolicyValue
}

// readPolicy reads what the maps hold, for Apply.
func (r *Reconciler) readPolicy() (*installed, error) {
	in := &installed{programs: map[uint32]bool{}, identities: map[uint32]bool{}}
	eps, err := r.maps.Endpoints.List()
	if err != nil {
		return in, err
	}
	for _, ep := range eps {
		in.programs[ep.IngressProgram] = true
		in.programs[ep.EgressProgram] = true
	}
	delete(in.programs, 0)
	if in.ips, err = r.maps.PolicyIPs.List(); err != nil {
		return in, err
	}
	for _, id := range in.ips {
		in.identities[id] = true
	}
	in.entries, err = r.maps.Policy.List()
	return in, err
}

// installedPolicy is what the last successful pass left, for Update.
func (d *desired) installedPolicy() *installed {
	in := &installed{programs: map[uint32]bool{}, identities: map[uint32]bool{}, ips: d.policy.IPs,
		entries: make(map[maps.PolicyKey]maps.PolicyValue, len(d.entries))}
	for k, v := range d.entries {
		in.entries[k] = v
	}
	for _, ep := range d.endpoints {
		in.programs[ep.IngressProgram] = true
		in.programs[ep.EgressProgram] = true
	}
	delete(in.programs, 0)
	for _, id := range d.policy.IPs {
		in.identities[id] = true
	}
	return in
}

func union(a, b map[uint32]bool) map[uint32]bool {
	out := make(map[uint32]bool, len(a)+len(b))
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

// addPolicy writes what the new state needs before endpoints move to it: fresh rule counters,
// the entries of every program old or new for every identity old or new, then the identities,
// failsafe ports and timeouts. It reports whether anything policy reads changed.
func (r *Reconciler) addPolicy(d *desired, in *installed) (bool, error) {
	var errs []error
	_, err := r.resetRules(d.policy.NewRules)
	errs = append(errs, err)
	changed := false
	if d.policy.Tables != nil {
		both := d.policy.Tables.Entries(union(in.programs, d.policy.Programs), union(in.identities, d.policy.Identities))
		if in.entries == nil {
			in.entries = map[maps.PolicyKey]maps.PolicyValue{}
		}
		for k, v := range both {
			if cur, ok := in.entries[k]; ok && cur == v {
				continue
			}
			changed = true
			errs = append(errs, r.maps.Policy.Put(k, v))
			in.entries[k] = v // installed now: removePolicy deletes it unless the new state keeps it
		}
	}
	for p, id := range d.policy.IPs {
		if cur, ok := in.ips[p]; ok && cur == id {
			continue
		}
		changed = true
		errs = append(errs, r.maps.PolicyIPs.Put(p, id))
	}
	for p := range in.ips {
		if _, ok := d.policy.IPs[p]; !ok {
			changed = true
			errs = append(errs, r.maps.PolicyIPs.Delete(p))
		}
	}
	c, err := r.syncPolicySettings(d.policy)
	errs = append(errs, err)
	return changed || c, errors.Join(errs...)
}

// resetRules zeroes the hit counters of new rule ids.
func (r *Reconciler) resetRules(ids []uint32) (bool, error) {
	var errs []error
	for _, id := range ids {
		errs = append(errs, r.maps.RuleHits.Reset(id))
	}
	return false, errors.Join(errs...)
}

// syncPolicySettings writes the failsafe ports and conntrack timeouts.
func (r *Reconciler) syncPolicySettings(p Policy) (bool, error) {
	changed := false
	var errs []error
	if p.Failsafe != nil {
		c, err := r.maps.Failsafe.Sync(p.Failsafe)
		changed = changed || c
		errs = append(errs, err)
	}
	c, err := r.maps.Config.SetTimeouts(p.Timeouts)
	errs = append(errs, err)
	return changed || c, errors.Join(errs...)
}

// removePolicy deletes the entries the new state does not need, once no endpoint and no identity
// leads to them.
func (r *Reconciler) removePolicy(d *desired, in *installed) (bool, error) {
	var errs []error
	changed := false
	for k := range in.entries {
		if _, ok := d.entries[k]; ok {
			continue
		}
		changed = true
		errs = append(errs, r.maps.Policy.Delete(k))
	}
	return changed, errors.Join(errs...)
}

func (r *Reconciler) bumpGeneration() (bool, error) {
	g, err := r.maps.Config.BumpGeneration()
	if err != nil {
		return false, fmt.Errorf("bump policy generation: %w", err)
	}
	r.log.Debug("policy generation", "generation", g)
	return true, nil
}

// EntryWriter writes and deletes policy map entries: the policy map, or a test's stand-in.
type EntryWriter interface {
	Put(maps.PolicyKey, maps.PolicyValue) error
	Delete(maps.PolicyKey) error
}

// PolicyEntries is what the policy map holds, as the passes left it, indexed for the incremental
// path: how many entries name each source-port table, and each table's keys.
type PolicyEntries struct {
	m      map[maps.PolicyKey]maps.PolicyValue
	refs   map[uint32]int
	tables map[uint32]map[maps.PolicyKey]bool
}

// NewPolicyEntries indexes the entries m (which it takes over).
func NewPolicyEntries(m map[maps.PolicyKey]maps.PolicyValue) *PolicyEntries {
	if m == nil {
		m = map[maps.PolicyKey]maps.PolicyValue{}
	}
	e := &PolicyEntries{m: m, refs: map[uint32]int{}, tables: map[uint32]map[maps.PolicyKey]bool{}}
	for k, v := range m {
		e.index(k, v)
	}
	return e
}

// Map is the entries, owned by e.
func (e *PolicyEntries) Map() map[maps.PolicyKey]maps.PolicyValue { return e.m }

func (e *PolicyEntries) set(k maps.PolicyKey, v maps.PolicyValue) {
	e.unset(k)
	e.m[k] = v
	e.index(k, v)
}

func (e *PolicyEntries) index(k maps.PolicyKey, v maps.PolicyValue) {
	if k.Program&maps.SourcePortTable != 0 {
		if e.tables[k.Program] == nil {
			e.tables[k.Program] = map[maps.PolicyKey]bool{}
		}
		e.tables[k.Program][k] = true
	} else if v.Action == maps.ActionSourcePort {
		e.refs[v.Rule]++
	}
}

func (e *PolicyEntries) unset(k maps.PolicyKey) {
	old, ok := e.m[k]
	if !ok {
		return
	}
	delete(e.m, k)
	if k.Program&maps.SourcePortTable != 0 {
		delete(e.tables[k.Program], k)
		if len(e.tables[k.Program]) == 0 {
			delete(e.tables, k.Program)
		}
	} else if old.Action == maps.ActionSourcePort {
		if e.refs[old.Rule]--; e.refs[old.Rule] <= 0 {
			delete(e.refs, old.Rule)
		}
	}
}

// PolicyRemoval is the second half of an incremental policy change: what to delete once no
// endpoint and no identity leads there any more.
type PolicyRemoval struct {
	e          *PolicyEntries
	candidates []maps.PolicyKey
	programs   map[uint32]bool // the new state's
	identities map[uint32]bool
	dirty      map[uint32]bool
	wanted     map[maps.PolicyKey]maps.PolicyValue // the new entries of the changed pairs
}

func minus(a, b map[uint32]bool) map[uint32]bool {
	out := map[uint32]bool{}
	for k := range a {
		if !b[k] {
			out[k] = true
		}
	}
	return out
}

// AddDelta writes what next (whose Delta is based on prev, the policy e holds) needs before
// endpoints move to it: the entries of the programs and identities that came or changed, for
// every program and identity old or new, and the policy_ips prefixes that changed (to ips, if
// not nil). Its cost is in what changed, not in what the maps hold.
func (e *PolicyEntries) AddDelta(prev, next Policy, w EntryWriter, ips *maps.PolicyIPs) (*PolicyRemoval, bool, error) {
	var errs []error
	changed := false
	newP, goneP := minus(next.Programs, prev.Programs), minus(prev.Programs, next.Programs)
	newI, goneI := minus(next.Identities, prev.Identities), minus(prev.Identities, next.Identities)
	allP, allI := union(prev.Programs, next.Programs), union(prev.Identities, next.Identities)
	changedI := union(newI, next.Delta.Identities)
	rm := &PolicyRemoval{e: e, programs: next.Programs, identities: next.Identities, dirty: next.Delta.Identities,
		wanted: map[maps.PolicyKey]maps.PolicyValue{}}
	if next.Tables != nil {
		if len(newP) > 0 {
			for k, v := range next.Tables.Entries(newP, allI) {
				rm.wanted[k] = v
			}
		}
		if len(changedI) > 0 {
			for k, v := range next.Tables.Entries(allP, changedI) {
				rm.wanted[k] = v
			}
		}
		for k, v := range rm.wanted {
			if cur, ok := e.m[k]; ok && cur == v {
				continue
			}
			changed = true
			errs = append(errs, w.Put(k, v))
			e.set(k, v)
		}
		// What the programs and identities that go had, or got above for the move: the compiler
		// still knows them.
		if len(goneP) > 0 {
			for k := range next.Tables.Entries(goneP, allI) {
				rm.candidates = append(rm.candidates, k)
			}
		}
		if len(goneI) > 0 {
			for k := range next.Tables.Entries(allP, goneI) {
				rm.candidates = append(rm.candidates, k)
			}
		}
	}
	rm.candidates = append(rm.candidates, next.Delta.Stale...)
	if ips != nil {
		for _, p := range next.Delta.IPs {
			id, ok := next.IPs[p]
			_, had := prev.IPs[p]
			switch {
			case ok:
				errs = append(errs, ips.Put(p, id))
			case had:
				errs = append(errs, ips.Delete(p))
			default:
				continue
			}
			changed = true
		}
	}
	return rm, changed, errors.Join(errs...)
}

// Remove deletes the entries the new state does not need, and the source-port tables no entry
// names any more.
func (rm *PolicyRemoval) Remove(w EntryWriter) (bool, error) {
	var errs []error
	changed := false
	e := rm.e
	for _, k := range rm.candidates {
		if k.Program&maps.SourcePortTable != 0 {
			continue // tables go below, once nothing names them
		}
		if _, ok := e.m[k]; !ok {
			continue
		}
		if rm.programs[k.Program] && rm.identities[k.Identity] {
			if !rm.dirty[k.Identity] {
				continue // an unchanged pair of the new state
			}
			if _, ok := rm.wanted[k]; ok {
				continue
			}
		}
		changed = true
		errs = append(errs, w.Delete(k))
		e.unset(k)
	}
	for t, keys := range e.tables {
		if e.refs[t] > 0 {
			continue
		}
		for k := range keys {
			changed = true
			errs = append(errs, w.Delete(k))
			e.unset(k)
		}
	}
	return changed, errors.Join(errs...)
}
