package datastore

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
)

// DefaultTier is the tier of every policy that names none. It needs no record: without one it
// has DefaultTierOrder and denies what its policies leave undecided.
const DefaultTier = "default"

// DefaultTierOrder is the order of the default tier, Calico's.
const DefaultTierOrder = 1_000_000.0

// Tier default actions: what a tier does with traffic that a policy of it selects and no rule
// of it decides.
const (
	TierDeny = "Deny"
	TierPass = "Pass"
)

// Tier is an ordered group of policies, at tiers/<name> (Calico's Tier). Tiers are walked by
// order, then name; a tier none of whose policies selects a workload (in a direction) is
// skipped.
type Tier struct {
	Version int    `json:"version"`
	Name    string `json:"name"`
	// Order ranks the tier: lower first; tiers without an order come last, then by name.
	Order *float64 `json:"order,omitempty"`
	// DefaultAction is TierDeny (the default) or TierPass.
	DefaultAction string `json:"defaultAction,omitempty"`
}

// Validate reports the first thing wrong with t.
func (t Tier) Validate() error {
	if err := checkVersion(t.Version); err != nil {
		return err
	}
	if err := ValidateName(t.Name); err != nil {
		return fmt.Errorf("name: %w", err)
	}
	if err := checkOrder(t.Order); err != nil {
		return err
	}
	if t.DefaultAction != TierDeny && t.DefaultAction != TierPass {
		return fmt.Errorf("defaultAction %q: want %s or %s", t.DefaultAction, TierDeny, TierPass)
	}
	if t.Name == DefaultTier && (t.Order == nil || *t.Order != DefaultTierOrder || t.DefaultAction != TierDeny) {
		return fmt.Errorf("the %s tier has order %g and default action %s", DefaultTier, float64(DefaultTierOrder), TierDeny)
	}
	return nil
}

func (t *Tier) version() *int { return &t.Version }

func (t *Tier) setDefaults() {
	if t.DefaultAction == "" {
		t.DefaultAction = TierDeny
	}
}

// Profile gives the workloads that name it (Workload.Profiles) labels, and rules walked after
// every tier, at profiles/<name> (Calico's Profile). A workload's own label of a key wins over a
// profile's; of two profiles, the later one in the workload's list wins.
type Profile struct {
	Version       int               `json:"version"`
	Name          string            `json:"name"`
	LabelsToApply map[string]string `json:"labelsToApply,omitempty"`
	Ingress       []Rule            `json:"ingress,omitempty"`
	Egress        []Rule            `json:"egress,omitempty"`
}

// Validate reports the first thing wrong with p.
func (p Profile) Validate() error {
	if err := checkVersion(p.Version); err != nil {
		return err
	}
	if err := ValidateName(p.Name); err != nil {
		return fmt.Errorf("name: %w", err)
	}
	if err := checkLabels(p.LabelsToApply); err != nil {
		return fmt.Errorf("labelsToApply: %w", err)
	}
	if len(p.Ingress)+len(p.Egress) > MaxRulesPerPolicy {
		return fmt.Errorf("%d rules, limit %d", len(p.Ingress)+len(p.Egress), MaxRulesPerPolicy)
	}
	return validateRules(p.Ingress, p.Egress, false)
}

func (p *Profile) version() *int { return &p.Version }

func (p *Profile) setDefaults() {
	p.LabelsToApply = nilIfEmpty(p.LabelsToApply)
	normalizeRules(&p.Ingress, &p.Egress)
}

// checkOrder refuses an order that is not a finite number.
func checkOrder(order *float64) error {
	if order != nil && (math.IsNaN(*order) || math.IsInf(*order, 0)) {
		return errors.New("order: not a finite number")
	}
	return nil
}

// CompareOrder orders by order (lower first; none last), then by name: how Calico orders
// tiers, and policies within a tier.
func CompareOrder(aName string, aOrder *float64, bName string, bOrder *float64) int {
	switch {
	case aOrder != nil && bOrder != nil && *aOrder != *bOrder:
		return cmp.Compare(*aOrder, *bOrder)
	case aOrder != nil && bOrder == nil:
		return -1
	case aOrder == nil && bOrder != nil:
		return 1
	}
	return strings.Compare(aName, bName)
}

// EndpointPort is a named port of a workload (a container port of a pod): rules name it.
type EndpointPort struct {
	Name     string   `json:"name"`
	Protocol Protocol `json:"protocol"`
	Port     uint16   `json:"port"`
}

func (p EndpointPort) validate() error {
	if err := ValidatePortName(p.Name); err != nil {
		return fmt.Errorf("name %q: %w", p.Name, err)
	}
	if !p.Protocol.HasPorts() {
		return fmt.Errorf("%s: protocol %s has no ports", p.Name, p.Protocol)
	}
	if p.Port == 0 {
		return fmt.Errorf("%s: port 0", p.Name)
	}
	return nil
}

// ValidateNamespace checks a namespace name as Kubernetes does (a DNS-1123 label): 1 to 63
// lowercase letters, digits and hyphens, starting and ending with a letter or digit.
func ValidateNamespace(s string) error {
	if s == "" || len(s) > 63 {
		return fmt.Errorf("%q: a namespace is 1 to 63 characters", s)
	}
	for i, c := range []byte(s) {
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (c != '-' || i == 0 || i == len(s)-1) {
			return fmt.Errorf("%q: lowercase letters, digits and inner hyphens only", s)
		}
	}
	return nil
}

// ProfileLabels merges the labels a workload gets from its profiles (in order, a later one
// winning) under its own; profiles that do not exist give none.
func ProfileLabels(own map[string]string, names []string, profiles map[string]Profile) map[string]string {
	out := make(map[string]string, len(own))
	for _, n := range names {
		maps.Copy(out, profiles[n].LabelsToApply)
	}
	maps.Copy(out, own)
	return out
}

// checkPolicyName checks the key name of a policy: <name> or <namespace>/<name>.
func checkPolicyName(name string) error {
	ns, n, namespaced := strings.Cut(name, "/")
	if !namespaced {
		return ValidateName(name)
	}
	if err := ValidateNamespace(ns); err != nil {
		return fmt.Errorf("namespace: %w", err)
	}
	return ValidateName(n)
}

func bindPolicy(name string, v *Policy) error {
	ns, n, namespaced := strings.Cut(name, "/")
	if !namespaced {
		if v.Namespace != "" {
			return fmt.Errorf("namespace %q, but key name %q has none", v.Namespace, name)
		}
		return bindField(&v.Name, "name", name)
	}
	if err := bindField(&v.Namespace, "namespace", ns); err != nil {
		return err
	}
	return bindField(&v.Name, "name", n)
}

// checkProfileNames checks a workload's profile list.
func checkProfileNames(names []string) error {
	for i, n := range names {
		if err := ValidateName(n); err != nil {
			return fmt.Errorf("profiles[%d]: %w", i, err)
		}
		if slices.Contains(names[:i], n) {
			return fmt.Errorf("profiles[%d]: %q listed twice", i, n)
		}
	}
	return nil
}
