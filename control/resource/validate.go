package resource

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/api/validate/content"

	"github.com/margaynet/margay/control/policy/selector"
)

// The name formats of Calico's validator (libcalico-go/lib/validator/v3).
const (
	labelFmt     = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
	subdomainFmt = labelFmt + `(\.` + labelFmt + ")*"

	maxNameLength     = 253 // a DNS-1123 subdomain
	maxTierNameLength = 63  // a DNS-1123 label: tier names are label values
	maxSelectorLength = 1024
	maxAnnotations    = 256 << 10 // total bytes of keys and values, as Kubernetes has it
)

var (
	subdomainRe = regexp.MustCompile("^" + subdomainFmt + "$")
	tierNameRe  = regexp.MustCompile("^" + labelFmt + "$")
	// A NetworkPolicy name is a label, or two joined by a dot (tier.name, from when Calico
	// required that form in tiers other than default), or the name of a policy converted
	// from Kubernetes (knp.default.) or OpenStack (ossg.default.).
	networkPolicyNameRe = regexp.MustCompile(`^(` + labelFmt + `(\.` + labelFmt + `)?|(knp|ossg)\.default\.` + subdomainFmt + `)$`)
	// A GlobalNetworkPolicy name is a label, or two joined by a dot.
	globalNetworkPolicyNameRe = regexp.MustCompile(`^(` + labelFmt + `\.)?` + labelFmt + `$`)
	containerIDRe             = regexp.MustCompile(`^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$`)
	interfaceNameRe           = regexp.MustCompile(`^[a-zA-Z0-9_.-]{1,15}$`)
)

const (
	subdomainRule = "lower case letters, digits, '-' and '.', starting and ending with a letter or digit"
	labelRule     = "lower case letters, digits and '-', starting and ending with a letter or digit"
)

// validateMeta checks the metadata of a resource of kind k as Calico does, plus the namespace
// as Kubernetes has it.
func validateMeta(errs *errList, k Kind, m *ObjectMeta) {
	checkResourceName(errs, k, m.Name)
	switch {
	case k.Namespaced() && m.Namespace == "":
		errs.addf("metadata.namespace", "required")
	case k.Namespaced():
		if msgs := content.IsDNS1123Label(m.Namespace); len(msgs) > 0 {
			errs.addf("metadata.namespace", "%q is not a valid namespace: %s", m.Namespace, strings.Join(msgs, "; "))
		}
	case m.Namespace != "":
		errs.addf("metadata.namespace", "must not be set: %s is not namespaced", k)
	}
	checkLabels(errs, "metadata.labels", m.Labels)
	checkAnnotations(errs, "metadata.annotations", m.Annotations)
}

func checkResourceName(errs *errList, k Kind, name string) {
	const at = "metadata.name"
	if name == "" {
		errs.addf(at, "required")
		return
	}
	max, re, rule := maxNameLength, subdomainRe, subdomainRule+" (a DNS-1123 subdomain)"
	switch k {
	case KindNetworkPolicy:
		re, rule = networkPolicyNameRe, labelRule+", with at most one '.' (or knp.default.<name>)"
	case KindGlobalNetworkPolicy:
		re, rule = globalNetworkPolicyNameRe, labelRule+", with at most one '.'"
	case KindTier:
		checkTierName(errs, at, name)
		return
	}
	if len(name) > max {
		errs.addf(at, "%d bytes long, more than %d", len(name), max)
	} else if !re.MatchString(name) {
		errs.addf(at, "%q is not a valid %s name: %s", name, k, rule)
	}
}

// checkTierName checks the name of a tier. Tier names are label values (of TierLabel), so
// they are DNS-1123 labels.
func checkTierName(errs *errList, at path, name string) {
	if len(name) > maxTierNameLength {
		errs.addf(at, "%d bytes long, more than %d", len(name), maxTierNameLength)
	} else if !tierNameRe.MatchString(name) {
		errs.addf(at, "%q is not a valid Tier name: %s (a DNS-1123 label)", name, labelRule)
	}
}

// checkName checks the name of a resource that another refers to (a node, a profile, ...).
func checkName(errs *errList, at path, name string) {
	if len(name) > maxNameLength {
		errs.addf(at, "%d bytes long, more than %d", len(name), maxNameLength)
	} else if !subdomainRe.MatchString(name) {
		errs.addf(at, "%q is not a valid name: %s", name, subdomainRule)
	}
}

func checkLabels(errs *errList, at path, labels map[string]string) {
	for _, k := range sortedKeys(labels) {
		if msgs := content.IsLabelKey(k); len(msgs) > 0 {
			errs.addf(at.key(k), "invalid label key: %s", strings.Join(msgs, "; "))
		}
		if msgs := content.IsLabelValue(labels[k]); len(msgs) > 0 {
			errs.addf(at.key(k), "invalid label value %q: %s", labels[k], strings.Join(msgs, "; "))
		}
	}
}

func checkAnnotations(errs *errList, at path, annotations map[string]string) {
	total := 0
	for _, k := range sortedKeys(annotations) {
		if msgs := content.IsLabelKey(strings.ToLower(k)); len(msgs) > 0 {
			errs.addf(at.key(k), "invalid annotation key: %s", strings.Join(msgs, "; "))
		}
		total += len(k) + len(annotations[k])
	}
	if total > maxAnnotations {
		errs.addf(at, "%d bytes in all, more than %d", total, maxAnnotations)
	}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// checkSelector reports s, the selector at at, when it does not parse or is longer than
// Calico allows. It returns the parsed selector and whether s is valid; the empty selector is
// valid and means all().
func checkSelector(errs *errList, at path, s string) (selector.Selector, bool) {
	if len(s) > maxSelectorLength {
		errs.addf(at, "%d bytes long, more than %d", len(s), maxSelectorLength)
		return selector.Selector{}, false
	}
	sel, err := selector.Parse(s)
	if err != nil {
		errs.addf(at, "%s", err)
		return selector.Selector{}, false
	}
	return sel, true
}

// checkNoGlobal reports global() in a selector other than a rule's namespaceSelector. Calico
// checks the text, not the parsed selector, and so does this.
func checkNoGlobal(errs *errList, at path, s string) {
	if strings.Contains(s, "global(") {
		errs.addf(at, "global() can only be used in a rule's namespaceSelector")
	}
}

// parseNet reads an IP network the way Calico's "net" check does: a CIDR whose address has no
// bits beyond its prefix, or an address (a /32 or /128).
func parseNet(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := parseIP(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	return parseMaskedCIDR(s)
}

// parseMaskedCIDR reads a CIDR whose address has no bits beyond its prefix.
func parseMaskedCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%q is not strictly masked: did you mean %s?", s, p.Masked())
	}
	return p, nil
}

// parseCIDROrIP reads a CIDR (masked or not) or an address, as Calico's "cidr" check does.
func parseCIDROrIP(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := parseIP(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR or an IP address", s)
	}
	return p, nil
}

// parseIP reads an IPv4 or IPv6 address (without a zone).
func parseIP(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	}
	return a.Unmap(), nil
}

// checkIPv4 reports s unless it is an IPv4 address.
func checkIPv4(errs *errList, at path, s string) {
	if a, err := parseIP(s); err != nil || !a.Is4() {
		errs.addf(at, "%q is not an IPv4 address", s)
	}
}

// checkIPv6 reports s unless it is an IPv6 address.
func checkIPv6(errs *errList, at path, s string) {
	if a, err := netip.ParseAddr(s); err != nil || !a.Is6() || a.Is4In6() || a.Zone() != "" {
		errs.addf(at, "%q is not an IPv6 address", s)
	}
}

// checkMAC reports s unless it is a MAC address.
func checkMAC(errs *errList, at path, s string) {
	if _, err := net.ParseMAC(s); err != nil {
		errs.addf(at, "%q is not a MAC address", s)
	}
}

// checkOneOf reports v unless it is one of allowed.
func checkOneOf[T ~string](errs *errList, at path, v T, allowed ...T) bool {
	if slices.Contains(allowed, v) {
		return true
	}
	want := make([]string, len(allowed))
	for i, a := range allowed {
		want[i] = string(a)
	}
	errs.addf(at, "%q is not one of %s", v, strings.Join(want, ", "))
	return false
}
