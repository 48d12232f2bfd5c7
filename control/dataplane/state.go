package dataplane

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/margaynet/margay/control/hostconv"
	"github.com/margaynet/margay/maps"
)

// Workload is a local workload as the dataplane needs it.
type Workload struct {
	IfName string           // host-side veth, cali + 11 hex digits
	IPv4   netip.Addr       // its /32
	MAC    net.HardwareAddr // workload-side MAC
	// IngressProgram and EgressProgram are its compiled policy in each direction (Policy);
	// 0: no policy selects it there, everything is allowed.
	IngressProgram, EgressProgram uint32
}

// RemoteRoute is a prefix reached through another host.
type RemoteRoute struct {
	Prefix  netip.Prefix
	NextHop netip.Addr
	// Workload marks a single borrowed /32 rather than a whole block.
	Workload bool
}

// State is what the host should look like.
type State struct {
	Uplink    string                       // interface towards the other hosts
	Workloads map[string]Workload          // on this host, by interface name (IfName)
	Blocks    []netip.Prefix               // blocks this host owns: blackholed, LOCAL_BLOCK
	Remote    map[netip.Prefix]RemoteRoute // learned from the other hosts, by Prefix
	Pools     []netip.Prefix               // IP pools, for the IN_POOL flag
	// Hosts are the addresses of every host of the cluster, Self among them: routes of kind
	// HOST that policy reads (failsafe ports, this host's access to its workloads).
	Hosts []netip.Addr
	Self  netip.Addr
	// Policy is the compiled policy; the zero value has none.
	Policy Policy
	// Changed, when set, names what may differ from the State of the pass before: Update then
	// looks at those workloads and remote routes only, when the rest (uplink, blocks, pools,
	// hosts) is the same. nil: anything may have changed.
	Changed *Changed
}

// Changed names the workloads (by interface) and remote routes (by prefix) that came, went or
// changed since the State of the pass before, their policy programs included.
type Changed struct {
	Workloads map[string]bool
	Remote    map[netip.Prefix]bool
}

// WorkloadsOf indexes workloads by interface name, as State.Workloads has them.
func WorkloadsOf(ws ...Workload) map[string]Workload {
	m := make(map[string]Workload, len(ws))
	for _, w := range ws {
		m[w.IfName] = w
	}
	return m
}

// RemoteOf indexes remote routes by prefix, as State.Remote has them.
func RemoteOf(rs ...RemoteRoute) map[netip.Prefix]RemoteRoute {
	m := make(map[netip.Prefix]RemoteRoute, len(rs))
	for _, r := range rs {
		m[r.Prefix] = r
	}
	return m
}

// Policy is the compiled policy as the maps hold it.
type Policy struct {
	IPs map[netip.Prefix]uint32 // policy_ips: prefix -> identity
	// Programs and Identities are the ones IPs and the workloads use.
	Programs, Identities map[uint32]bool
	// Tables are the compilation's policy tables, which spell out the entries of Programs and
	// Identities (and of those the maps still hold from the previous state); nil = none.
	Tables PolicyTables
	// NewRules are rule ids handed out since the last pass: their hit counters start at zero.
	NewRules []uint32
	Failsafe map[maps.FailsafeKey]maps.FailsafeDirection
	Timeouts maps.Timeouts
	// Compiled numbers the compilation IPs, Programs, Identities and Tables come from: a state
	// with the same non-zero number as the last pass's has the same policy (and the same
	// Failsafe and Timeouts), so Update leaves the policy maps alone and spells out no entries;
	// 0 says nothing.
	Compiled uint64
	// Delta, when set, says how this compilation differs from compilation Delta.Base: an Update
	// whose last pass applied Base writes and deletes only the entries and policy_ips prefixes of
	// what changed, instead of spelling out and comparing all of them.
	Delta *PolicyDelta
}

// PolicyTables are a compilation's policy tables (policy.Compiler): the policy map entries of any
// programs and identities they know, including ones the maps still hold from the previous
// state, so that both states read right while the maps move from one to the other. They are
// asked for the entries of the (program, identity) pairs a pass writes or deletes, rather than
// spelling out every entry (programs × identities) of every compilation.
type PolicyTables interface {
	Entries(programs, identities map[uint32]bool) map[maps.PolicyKey]maps.PolicyValue
}

// EntriesFunc makes a function PolicyTables.
type EntriesFunc func(programs, identities map[uint32]bool) map[maps.PolicyKey]maps.PolicyValue

// Entries implements PolicyTables.
func (f EntriesFunc) Entries(programs, identities map[uint32]bool) map[maps.PolicyKey]maps.PolicyValue {
	return f(programs, identities)
}

// PolicyDelta is what changed between two compilations. The programs and identities that came
// and went are the differences of Programs and Identities; the entries of every other
// (program, identity) pair stay the same, except for Identities.
type PolicyDelta struct {
	Base uint64
	// IPs are the policy_ips prefixes whose identity changed, came or went.
	IPs []netip.Prefix
	// Identities have new entries under the same number: all of theirs are written again, and
	// Stale, the keys they had, deleted unless still wanted.
	Identities map[uint32]bool
	Stale      []maps.PolicyKey
}

// Validate refuses a state the reconciler could only half apply.
func (s State) Validate() error {
	if s.Uplink == "" {
		return fmt.Errorf("validate state: no uplink")
	}
	seenIP := make(map[netip.Addr]bool, len(s.Workloads))
	for name, w := range s.Workloads {
		if err := validateWorkload(name, w); err != nil {
			return err
		}
		if seenIP[w.IPv4] {
			return fmt.Errorf("validate state: workload %s (%v) listed twice", w.IfName, w.IPv4)
		}
		seenIP[w.IPv4] = true
	}
	for _, h := range s.Hosts {
		if !h.Is4() {
			return fmt.Errorf("validate state: host address %v is not IPv4", h)
		}
	}
	if s.Self.IsValid() && !s.Self.Is4() {
		return fmt.Errorf("validate state: own address %v is not IPv4", s.Self)
	}
	for _, p := range slices.Concat(s.Blocks, s.Pools) {
		if !p.IsValid() || !p.Addr().Is4() || p.Masked() != p {
			return fmt.Errorf("validate state: %v is not an IPv4 network prefix", p)
		}
	}
	for p, r := range s.Remote {
		if err := validateRemote(p, r); err != nil {
			return err
		}
	}
	return nil
}

// validateChanged is Validate for an incremental Update: the workloads and remote routes
// Changed names (the reconciler refuses an address two workloads claim as it goes).
func (s State) validateChanged() error {
	if s.Uplink == "" {
		return fmt.Errorf("validate state: no uplink")
	}
	for name := range s.Changed.Workloads {
		if w, ok := s.Workloads[name]; ok {
			if err := validateWorkload(name, w); err != nil {
				return err
			}
		}
	}
	for p := range s.Changed.Remote {
		if r, ok := s.Remote[p]; ok {
			if err := validateRemote(p, r); err != nil {
				return err
			}
		}
	}
	return nil
}

func validateWorkload(name string, w Workload) error {
	if name != w.IfName {
		return fmt.Errorf("validate state: workload %s listed as %s", w.IfName, name)
	}
	if !hostconv.IsVethName(w.IfName) {
		return fmt.Errorf("validate state: workload interface %q is not cali + 11 hex digits", w.IfName)
	}
	if !w.IPv4.Is4() {
		return fmt.Errorf("validate state: workload %s address %v is not IPv4", w.IfName, w.IPv4)
	}
	if len(w.MAC) != 6 {
		return fmt.Errorf("validate state: workload %s MAC %v is not 6 bytes", w.IfName, w.MAC)
	}
	return nil
}

func validateRemote(p netip.Prefix, r RemoteRoute) error {
	if p != r.Prefix {
		return fmt.Errorf("validate state: remote route %v listed as %v", r.Prefix, p)
	}
	if !r.Prefix.IsValid() || !r.Prefix.Addr().Is4() || r.Prefix.Masked() != r.Prefix {
		return fmt.Errorf("validate state: remote route %v is not an IPv4 network prefix", r.Prefix)
	}
	if !r.NextHop.Is4() {
		return fmt.Errorf("validate state: remote route %v has next hop %v", r.Prefix, r.NextHop)
	}
	return nil
}
