package resource

// Profile gives the endpoints that name it labels and, after all policies, rules (Calico's
// older form of policy, kept for compatibility). In Margay each Docker network is a profile.
type Profile struct {
	ObjectMeta `json:"metadata"`
	Spec       ProfileSpec `json:"spec"`
}

// ProfileSpec is the spec of a Profile.
type ProfileSpec struct {
	Ingress []Rule `json:"ingress,omitempty"`
	Egress  []Rule `json:"egress,omitempty"`
	// LabelsToApply are labels every endpoint of the profile gets, unless it has a label of
	// that key itself.
	LabelsToApply map[string]string `json:"labelsToApply,omitempty"`
}

// Kind returns KindProfile.
func (*Profile) Kind() Kind { return KindProfile }

// Validate checks p as Calico does, plus what Margay cannot enforce.
func (p *Profile) Validate() error {
	var errs errList
	validateMeta(&errs, KindProfile, &p.ObjectMeta)
	const at path = "spec"
	checkRules(&errs, at.child("ingress"), p.Spec.Ingress)
	checkRules(&errs, at.child("egress"), p.Spec.Egress)
	for _, dir := range []struct {
		name  string
		rules []Rule
	}{{"ingress", p.Spec.Ingress}, {"egress", p.Spec.Egress}} {
		for i, r := range dir.rules {
			if r.Action == Pass {
				errs.unsupported(at.child(dir.name).index(i).child("action"), whyProfilePass)
			}
		}
	}
	checkLabels(&errs, at.child("labelsToApply"), p.Spec.LabelsToApply)
	return errs.err()
}
