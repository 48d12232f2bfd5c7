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
	changed := false
	for _, id := range d.policy.NewRules {
		errs = append(errs, r.maps.RuleHits.Reset(id))
	}
	if d.policy.Entries != nil {
		both := d.policy.Entries(union(in.programs, d.policy.Programs), union(in.identities, d.policy.Identities))
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
	if d.policy.Failsafe != nil {
		c, err := r.maps.Failsafe.Sync(d.policy.Failsafe)
		changed = changed || c
		errs = append(errs, err)
	}
	c, err := r.maps.Config.SetTimeouts(d.policy.Timeouts)
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
