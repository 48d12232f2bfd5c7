package resource

import "strconv"

// Tier is an ordered group of policies: tiers are evaluated by order, and within a tier the
// policies by theirs. A Pass rule, or the tier's default action Pass, goes on with the next
// tier.
type Tier struct {
	ObjectMeta `json:"metadata"`
	Spec       TierSpec `json:"spec"`
}

// TierSpec is the spec of a Tier.
type TierSpec struct {
	// Order ranks the tier: lower first, then by name; nil comes last.
	Order *float64 `json:"order,omitempty"`
	// DefaultAction applies to traffic a policy of the tier selects and no rule of it
	// matches: Deny (the default) or Pass.
	DefaultAction *Action `json:"defaultAction,omitempty"`
}

// Kind returns KindTier.
func (*Tier) Kind() Kind { return KindTier }

// Defaulted returns a copy of t with Calico's default filled in: defaultAction Deny.
func (t *Tier) Defaulted() *Tier {
	out := clone(t)
	if out.Spec.DefaultAction == nil {
		deny := Deny
		out.Spec.DefaultAction = &deny
	}
	return out
}

// builtinTiers are the tiers whose order and default action Calico fixes.
var builtinTiers = map[string]struct {
	order         float64
	defaultAction Action
}{
	DefaultTierName:      {DefaultTierOrder, Deny},
	KubeAdminTierName:    {KubeAdminTierOrder, Pass},
	KubeBaselineTierName: {KubeBaselineTierOrder, Pass},
}

// Validate checks t as Calico does.
func (t *Tier) Validate() error {
	var errs errList
	validateMeta(&errs, KindTier, &t.ObjectMeta)
	const at path = "spec"
	action := Deny // Calico's default, filled in before its checks
	if t.Spec.DefaultAction != nil {
		action = *t.Spec.DefaultAction
		checkOneOf(&errs, at.child("defaultAction"), action, Deny, Pass)
	}
	if b, ok := builtinTiers[t.Name]; ok {
		if t.Spec.Order == nil || *t.Spec.Order != b.order {
			errs.addf(at.child("order"), "the %s tier must have order %s", t.Name, strconv.FormatFloat(b.order, 'f', -1, 64))
		}
		if action != b.defaultAction {
			errs.addf(at.child("defaultAction"), "the %s tier must have default action %s", t.Name, b.defaultAction)
		}
	}
	return errs.err()
}
