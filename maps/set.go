package maps

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/margaynet/margay/loader"
)

// Set is the dataplane's maps, typed.
type Set struct {
	Routes    *Routes
	Endpoints *Endpoints
	Counters  *Counters
	Conntrack *Conntrack
	Policy    *Policy
	PolicyIPs *PolicyIPs
	RuleHits  *RuleHits
	Config    *Config
	Failsafe  *Failsafe

	owned []*ebpf.Map // closed by Close when OpenPinned opened them
}

// FromDataplane wraps the maps of a loaded dataplane; the Dataplane keeps owning them.
func FromDataplane(d *loader.Dataplane) *Set {
	m := d.Maps()
	config := NewConfig(m.Config)
	return &Set{Routes: NewRoutes(m.Routes, config), Endpoints: NewEndpoints(m.Endpoints, config),
		Counters: NewCounters(m.Counters), Conntrack: NewConntrack(m.Conntrack), Policy: NewPolicy(m.Policy),
		PolicyIPs: NewPolicyIPs(m.PolicyIps), RuleHits: NewRuleHits(m.RuleHits), Config: config,
		Failsafe: NewFailsafe(m.Failsafe)}
}

// OpenPinned opens the maps pinned under a bpffs root, as margayctl does on a running host.
func OpenPinned(root string) (*Set, error) {
	s := &Set{}
	var errs []error
	open := func(name string) *ebpf.Map {
		m, err := ebpf.LoadPinnedMap(loader.MapPin(root, name), nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("open pinned map %s: %w", name, err))
			return nil
		}
		s.owned = append(s.owned, m)
		return m
	}
	s.Config = NewConfig(open(loader.MargayMapConfig))
	s.Routes = NewRoutes(open(loader.MargayMapRoutes), s.Config)
	s.Endpoints = NewEndpoints(open(loader.MargayMapEndpoints), s.Config)
	s.Counters = NewCounters(open(loader.MargayMapCounters))
	s.Conntrack = NewConntrack(open(loader.MargayMapConntrack))
	s.Policy = NewPolicy(open(loader.MargayMapPolicy))
	s.PolicyIPs = NewPolicyIPs(open(loader.MargayMapPolicyIps))
	s.RuleHits = NewRuleHits(open(loader.MargayMapRuleHits))
	s.Failsafe = NewFailsafe(open(loader.MargayMapFailsafe))
	if err := errors.Join(errs...); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Close releases maps that OpenPinned opened; it leaves a dataplane's maps alone.
func (s *Set) Close() error {
	var errs []error
	for _, m := range s.owned {
		errs = append(errs, m.Close())
	}
	s.owned = nil
	return errors.Join(errs...)
}
