package maps

import (
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"sort"
	"sync"

	"github.com/cilium/ebpf"

	"github.com/margaynet/margay/loader"
)

// PolicyAction is what a policy entry says about a flow (C enum policy_action).
type PolicyAction uint8

// The actions of the policy map.
const (
	ActionAllow = PolicyAction(loader.MargayPolicyActionPOLICY_ALLOW)
	ActionDeny  = PolicyAction(loader.MargayPolicyActionPOLICY_DENY)
	// ActionSourcePort sends the lookup on to the source-port table named by the value's Rule.
	ActionSourcePort = PolicyAction(loader.MargayPolicyActionPOLICY_SPORT)
)

func (a PolicyAction) String() string {
	switch a {
	case ActionAllow:
		return "allow"
	case ActionDeny:
		return "deny"
	case ActionSourcePort:
		return "sport"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// SourcePortTable marks a program number as a source-port table.
const SourcePortTable = 1 << 31

// PolicyKey is one entry's place in the policy LPM trie. An entry without AnyProtocol unset
// covers every protocol of (Program, Identity) that has no entry of its own; with a protocol it
// covers the ports whose leading PortBits bits equal Port's.
type PolicyKey struct {
	Program  uint32
	Identity uint32
	// AllProtocols: the entry is the (Program, Identity) default; Protocol and Port are ignored.
	AllProtocols bool
	Protocol     uint8
	Port         uint16
	PortBits     uint8 // 0..16
}

func (k PolicyKey) String() string {
	if k.AllProtocols {
		return fmt.Sprintf("program %d identity %d any", k.Program, k.Identity)
	}
	lo, hi := k.PortRange()
	return fmt.Sprintf("program %d identity %d proto %d ports %d-%d", k.Program, k.Identity, k.Protocol, lo, hi)
}

// PortRange is the range of ports the key covers.
func (k PolicyKey) PortRange() (lo, hi uint16) {
	if k.PortBits == 0 {
		return 0, 0xffff
	}
	mask := uint16(0xffff) << (16 - k.PortBits)
	return k.Port & mask, k.Port | ^mask
}

func (k PolicyKey) raw() (loader.MargayPolicyKey, error) {
	r := loader.MargayPolicyKey{Program: k.Program, Identity: k.Identity}
	if k.AllProtocols {
		r.Prefixlen = 64
		return r, nil
	}
	if k.PortBits > 16 {
		return r, fmt.Errorf("policy key %v: %d port bits", k, k.PortBits)
	}
	lo, _ := k.PortRange()
	r.Prefixlen = 80 + uint32(k.PortBits)
	r.Protocol = k.Protocol
	r.Port = bits.ReverseBytes16(lo)
	return r, nil
}

func policyKeyFromRaw(r loader.MargayPolicyKey) PolicyKey {
	if r.Prefixlen <= 64 {
		return PolicyKey{Program: r.Program, Identity: r.Identity, AllProtocols: true}
	}
	return PolicyKey{Program: r.Program, Identity: r.Identity, Protocol: r.Protocol,
		Port: bits.ReverseBytes16(r.Port), PortBits: uint8(r.Prefixlen - 80)}
}

// PolicyValue is what a policy entry decides.
type PolicyValue struct {
	Action PolicyAction
	// Rule is the rule id whose hits the flow counts (0: default deny); for ActionSourcePort the
	// table to look up next.
	Rule uint32
	// Log is the id of a Log rule (a rule_hits index) that matched the flow before Rule; 0: none.
	// The dataplane counts it and sends a policy log event for a flow's first packet only; it
	// never changes the verdict. It fits in 24 bits (MaxPolicyLog). For ActionSourcePort it is
	// unused: the source-port table's entries carry the log of their ports.
	Log uint32
}

// MaxPolicyLog is the largest Log a policy value holds: the map keeps 24 bits of it.
const MaxPolicyLog = 1<<24 - 1

func (v PolicyValue) raw() (loader.MargayPolicyValue, error) {
	if v.Log > MaxPolicyLog {
		return loader.MargayPolicyValue{}, fmt.Errorf("log rule %d does not fit the value's 24 bits (at most %d)", v.Log, MaxPolicyLog)
	}
	return loader.MargayPolicyValue{Rule: v.Rule, Action: loader.MargayPolicyAction(v.Action),
		Log: [3]uint8{uint8(v.Log), uint8(v.Log >> 8), uint8(v.Log >> 16)}}, nil
}

func policyValueFromRaw(r loader.MargayPolicyValue) PolicyValue {
	return PolicyValue{Action: PolicyAction(r.Action), Rule: r.Rule,
		Log: uint32(r.Log[0]) | uint32(r.Log[1])<<8 | uint32(r.Log[2])<<16}
}

// Policy is the policy LPM trie.
type Policy struct{ m *ebpf.Map }

// NewPolicy wraps a loaded policy map.
func NewPolicy(m *ebpf.Map) *Policy { return &Policy{m: m} }

// Put adds or replaces an entry.
func (p *Policy) Put(k PolicyKey, v PolicyValue) error {
	rk, err := k.raw()
	if err != nil {
		return err
	}
	rv, err := v.raw()
	if err != nil {
		return fmt.Errorf("put policy %v: %w", k, err)
	}
	if err := p.m.Put(&rk, &rv); err != nil {
		return fmt.Errorf("put policy %v: %w", k, err)
	}
	return nil
}

// Delete removes an entry; a missing one is not an error.
func (p *Policy) Delete(k PolicyKey) error {
	rk, err := k.raw()
	if err != nil {
		return err
	}
	if err := p.m.Delete(&rk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete policy %v: %w", k, err)
	}
	return nil
}

// Lookup does what the BPF programs do: the longest entry matching a full key.
func (p *Policy) Lookup(program, identity uint32, proto uint8, port uint16) (PolicyValue, error) {
	rk := loader.MargayPolicyKey{Prefixlen: 96, Program: program, Identity: identity, Protocol: proto,
		Port: bits.ReverseBytes16(port)}
	var rv loader.MargayPolicyValue
	if err := p.m.Lookup(&rk, &rv); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return PolicyValue{}, ErrNotFound
		}
		return PolicyValue{}, err
	}
	return policyValueFromRaw(rv), nil
}

// List returns every entry.
func (p *Policy) List() (map[PolicyKey]PolicyValue, error) {
	out := map[PolicyKey]PolicyValue{}
	err := each(p.m, func(k loader.MargayPolicyKey, v loader.MargayPolicyValue) {
		out[policyKeyFromRaw(k)] = policyValueFromRaw(v)
	}, func() { clear(out) })
	if err != nil {
		return nil, fmt.Errorf("list policy: %w", err)
	}
	return out, nil
}

// PolicyIPs is the LPM trie from address prefixes to the identities policy sees.
type PolicyIPs struct{ m *ebpf.Map }

// NewPolicyIPs wraps a loaded policy_ips map.
func NewPolicyIPs(m *ebpf.Map) *PolicyIPs { return &PolicyIPs{m: m} }

// Put maps a prefix to an identity.
func (p *PolicyIPs) Put(prefix netip.Prefix, identity uint32) error {
	if !prefix.IsValid() || !prefix.Addr().Is4() || prefix.Masked() != prefix {
		return fmt.Errorf("put policy identity: %v is not an IPv4 network prefix", prefix)
	}
	k := routeKey(prefix)
	if err := p.m.Put(&k, &identity); err != nil {
		return fmt.Errorf("put policy identity %v: %w", prefix, err)
	}
	return nil
}

// Delete removes a prefix; a missing one is not an error.
func (p *PolicyIPs) Delete(prefix netip.Prefix) error {
	k := routeKey(prefix)
	if err := p.m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete policy identity %v: %w", prefix, err)
	}
	return nil
}

// List returns every prefix and its identity.
func (p *PolicyIPs) List() (map[netip.Prefix]uint32, error) {
	var (
		k   loader.MargayRouteKey
		v   uint32
		out = map[netip.Prefix]uint32{}
	)
	it := p.m.Iterate()
	for it.Next(&k, &v) {
		out[netip.PrefixFrom(addrFromBE32(k.Addr), int(k.Prefixlen))] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list policy identities: %w", err)
	}
	return out, nil
}

// RuleHits is the per-CPU array of rule hit counters.
type RuleHits struct{ m *ebpf.Map }

// NewRuleHits wraps a loaded rule_hits map.
func NewRuleHits(m *ebpf.Map) *RuleHits { return &RuleHits{m: m} }

// MaxRules is the number of rule ids, 0 included.
func (r *RuleHits) MaxRules() uint32 { return r.m.MaxEntries() }

// Get returns the packets and bytes counted for a rule, summed over CPUs.
func (r *RuleHits) Get(rule uint32) (packets, bytes uint64, err error) {
	var perCPU []loader.MargayCounterValue
	if err := r.m.Lookup(&rule, &perCPU); err != nil {
		return 0, 0, fmt.Errorf("rule hits %d: %w", rule, err)
	}
	for _, v := range perCPU {
		packets += v.Packets
		bytes += v.Bytes
	}
	return packets, bytes, nil
}

// Reset zeroes the counters of a rule id, before it is given to a new rule.
func (r *RuleHits) Reset(rule uint32) error {
	zero := make([]loader.MargayCounterValue, ebpf.MustPossibleCPU())
	if err := r.m.Put(&rule, zero); err != nil {
		return fmt.Errorf("reset rule hits %d: %w", rule, err)
	}
	return nil
}

// Timeouts are the conntrack timeouts; a zero field means the built-in default.
type Timeouts = loader.MargayCtTimeouts

// Config is the one-entry settings map. Its writes read, change and write the whole entry; the
// mutex keeps writers of one process (the reconciler, and the routes and endpoints wrappers that
// bump the route generation) from losing each other's changes. The agent is the only writing
// process.
type Config struct {
	m  *ebpf.Map
	mu sync.Mutex
}

// NewConfig wraps a loaded config map.
func NewConfig(m *ebpf.Map) *Config { return &Config{m: m} }

func (c *Config) get() (loader.MargayConfigValue, error) {
	var (
		zero uint32
		v    loader.MargayConfigValue
	)
	if err := c.m.Lookup(&zero, &v); err != nil {
		return v, fmt.Errorf("read config: %w", err)
	}
	return v, nil
}

func (c *Config) put(v loader.MargayConfigValue) error {
	var zero uint32
	if err := c.m.Put(&zero, &v); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

// modify reads the entry, lets change edit it and writes it back when change reports a change,
// all under the mutex; it reports whether it wrote.
func (c *Config) modify(change func(v *loader.MargayConfigValue) bool) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, err := c.get()
	if err != nil {
		return false, err
	}
	if !change(&v) {
		return false, nil
	}
	return true, c.put(v)
}

// Generation returns the policy generation.
func (c *Config) Generation() (uint32, error) {
	v, err := c.get()
	return v.PolicyGeneration, err
}

// BumpGeneration makes every conntrack entry be checked against policy again on its next packet.
// The agent is the only writer.
func (c *Config) BumpGeneration() (uint32, error) {
	var g uint32
	_, err := c.modify(func(v *loader.MargayConfigValue) bool {
		v.PolicyGeneration++
		g = v.PolicyGeneration
		return true
	})
	return g, err
}

// RouteGeneration returns the route generation.
func (c *Config) RouteGeneration() (uint32, error) {
	v, err := c.get()
	return v.RouteGeneration, err
}

// BumpRouteGeneration makes every route that conntrack entries keep stale, so that their next
// packets look the routes map up again. The routes and endpoints wrappers call it after each
// write.
func (c *Config) BumpRouteGeneration() error {
	_, err := c.modify(func(v *loader.MargayConfigValue) bool {
		v.RouteGeneration++
		return true
	})
	return err
}

// RestartRouteGeneration moves the route generation to a random value: conntrack entries that a
// config map of another life left with the same number (one replaced when its layout changed
// starts again from 0) then cannot pass for current. The agent calls it once at start.
func (c *Config) RestartRouteGeneration() error {
	_, err := c.modify(func(v *loader.MargayConfigValue) bool {
		old := v.RouteGeneration
		for v.RouteGeneration == old {
			v.RouteGeneration = rand.Uint32()
		}
		return true
	})
	return err
}

// SetTimeouts writes the conntrack timeouts; it reports whether they changed.
func (c *Config) SetTimeouts(t Timeouts) (bool, error) {
	return c.modify(func(v *loader.MargayConfigValue) bool {
		if v.CtTimeouts == t {
			return false
		}
		v.CtTimeouts = t
		return true
	})
}

// SetPrefilter records whether xdp_from_net runs on the uplink, so that from_net can skip the
// checks it already made; it reports whether the setting changed.
func (c *Config) SetPrefilter(on bool) (bool, error) {
	return c.setFlag(loader.MargayConfigFlagsCONFIG_XDP_PREFILTER, on)
}

// SetNFPolicy records whether nf_policy runs at netfilter's forward and local-in hooks, so that
// from_wep leaves the policy of what it hands to the kernel to it; it reports whether the setting
// changed.
func (c *Config) SetNFPolicy(on bool) (bool, error) {
	return c.setFlag(loader.MargayConfigFlagsCONFIG_NF_POLICY, on)
}

func (c *Config) setFlag(flag loader.MargayConfigFlags, on bool) (bool, error) {
	return c.modify(func(v *loader.MargayConfigValue) bool {
		flags := v.Flags &^ flag
		if on {
			flags |= flag
		}
		if flags == v.Flags {
			return false
		}
		v.Flags = flags
		return true
	})
}

// FailsafeDirection says on which side of a workload–host flow a failsafe port is the host's.
type FailsafeDirection uint8

// Failsafe directions.
const (
	FailsafeInbound  = FailsafeDirection(loader.MargayFailsafeFlagsFAILSAFE_INBOUND)
	FailsafeOutbound = FailsafeDirection(loader.MargayFailsafeFlagsFAILSAFE_OUTBOUND)
)

// FailsafeKey is a protocol and port.
type FailsafeKey struct {
	Protocol uint8
	Port     uint16
}

// Failsafe is the map of failsafe ports.
type Failsafe struct{ m *ebpf.Map }

// NewFailsafe wraps a loaded failsafe map.
func NewFailsafe(m *ebpf.Map) *Failsafe { return &Failsafe{m: m} }

// List returns every failsafe port.
func (f *Failsafe) List() (map[FailsafeKey]FailsafeDirection, error) {
	var (
		k   loader.MargayFailsafeKey
		v   loader.MargayFailsafeFlags
		out = map[FailsafeKey]FailsafeDirection{}
	)
	it := f.m.Iterate()
	for it.Next(&k, &v) {
		out[FailsafeKey{Protocol: k.Protocol, Port: k.Port}] = FailsafeDirection(v)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list failsafe ports: %w", err)
	}
	return out, nil
}

// Sync makes the map hold exactly want; it reports whether anything changed.
func (f *Failsafe) Sync(want map[FailsafeKey]FailsafeDirection) (bool, error) {
	have, err := f.List()
	if err != nil {
		return false, err
	}
	changed := false
	keys := make([]FailsafeKey, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return keys[i].Protocol < keys[j].Protocol || keys[i].Protocol == keys[j].Protocol && keys[i].Port < keys[j].Port
	})
	for _, k := range keys {
		if have[k] == want[k] {
			continue
		}
		rk := loader.MargayFailsafeKey{Protocol: k.Protocol, Port: k.Port}
		v := loader.MargayFailsafeFlags(want[k])
		if err := f.m.Put(&rk, &v); err != nil {
			return changed, fmt.Errorf("put failsafe %d/%d: %w", k.Protocol, k.Port, err)
		}
		changed = true
	}
	for k := range have {
		if _, ok := want[k]; ok {
			continue
		}
		rk := loader.MargayFailsafeKey{Protocol: k.Protocol, Port: k.Port}
		if err := f.m.Delete(&rk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return changed, fmt.Errorf("delete failsafe %d/%d: %w", k.Protocol, k.Port, err)
		}
		changed = true
	}
	return changed, nil
}
