package resource

import (
	"fmt"
	"net/netip"
	"strings"
)

// IPPool is a range of addresses IPAM assigns workload addresses from, in blocks of
// BlockSize bits that hosts claim.
type IPPool struct {
	ObjectMeta `json:"metadata"`
	Spec       IPPoolSpec `json:"spec"`
}

// IPPoolSpec is the spec of an IPPool.
type IPPoolSpec struct {
	CIDR             string    `json:"cidr"`
	VXLANMode        VXLANMode `json:"vxlanMode,omitempty"`
	IPIPMode         IPIPMode  `json:"ipipMode,omitempty"`
	NATOutgoing      bool      `json:"natOutgoing,omitempty"`
	Disabled         bool      `json:"disabled,omitempty"`
	DisableBGPExport bool      `json:"disableBGPExport,omitempty"`
	// BlockSize is the prefix length of the pool's blocks; 0 means DefaultBlockSize.
	BlockSize         int                `json:"blockSize,omitempty"`
	NodeSelector      string             `json:"nodeSelector,omitempty"`
	NamespaceSelector string             `json:"namespaceSelector,omitempty"`
	AllowedUses       []IPPoolAllowedUse `json:"allowedUses,omitempty"`
	AssignmentMode    *AssignmentMode    `json:"assignmentMode,omitempty"`
}

// IPIPMode says when to encapsulate in IP-in-IP.
type IPIPMode string

// VXLANMode says when to encapsulate in VXLAN.
type VXLANMode string

// The encapsulation modes, of IPIPMode and VXLANMode alike.
const (
	EncapNever       = "Never"
	EncapAlways      = "Always"
	EncapCrossSubnet = "CrossSubnet"
)

// IPPoolAllowedUse is what the addresses of a pool may be assigned for.
type IPPoolAllowedUse string

// The uses of a pool.
const (
	AllowedUseWorkload     IPPoolAllowedUse = "Workload"
	AllowedUseTunnel       IPPoolAllowedUse = "Tunnel"
	AllowedUseLoadBalancer IPPoolAllowedUse = "LoadBalancer"
)

// AssignmentMode says whether IPAM assigns from a pool by itself or only when asked to.
type AssignmentMode string

// The assignment modes.
const (
	AssignmentAutomatic AssignmentMode = "Automatic"
	AssignmentManual    AssignmentMode = "Manual"
)

// DefaultBlockSize is the block size of an IPv4 pool that names none (/26: 64 addresses).
const DefaultBlockSize = 26

// defaultBlockSizeV6 is Calico's block size of an IPv6 pool that names none.
const defaultBlockSizeV6 = 122

var (
	linkLocal4 = netip.MustParsePrefix("169.254.0.0/16")
	linkLocal6 = netip.MustParsePrefix("fe80::/10")
)

// Kind returns KindIPPool.
func (*IPPool) Kind() Kind { return KindIPPool }

// Defaulted returns a copy of p with Calico's defaults filled in, as Calico stores the pool:
// the CIDR in canonical form, the block size (DefaultBlockSize), nodeSelector all(), the
// uses Workload and Tunnel, assignment mode Automatic and both encapsulations Never.
func (p *IPPool) Defaulted() *IPPool {
	out := clone(p)
	s := &out.Spec
	if cidr, err := netip.ParsePrefix(s.CIDR); err == nil {
		s.CIDR = cidr.String()
		if s.BlockSize == 0 {
			s.BlockSize = DefaultBlockSize
			if cidr.Addr().Is6() {
				s.BlockSize = defaultBlockSizeV6
			}
		}
	}
	if s.NodeSelector == "" {
		s.NodeSelector = "all()"
	}
	if len(s.AllowedUses) == 0 {
		s.AllowedUses = []IPPoolAllowedUse{AllowedUseWorkload, AllowedUseTunnel}
	}
	if s.AssignmentMode == nil {
		automatic := AssignmentAutomatic
		s.AssignmentMode = &automatic
	}
	if s.IPIPMode == "" {
		s.IPIPMode = EncapNever
	}
	if s.VXLANMode == "" {
		s.VXLANMode = EncapNever
	}
	return out
}

// Validate checks p as Calico does, plus what Margay cannot enforce.
func (p *IPPool) Validate() error {
	var errs errList
	validateMeta(&errs, KindIPPool, &p.ObjectMeta)
	const at path = "spec"
	s := &p.Spec

	cidr, cidrOK := netip.Prefix{}, false
	if s.CIDR == "" {
		errs.addf(at.child("cidr"), "required")
	} else if c, err := parseMaskedCIDR(s.CIDR); err != nil {
		if a, ipErr := parseIP(s.CIDR); ipErr == nil {
			err = fmt.Errorf("%q is an address, not a CIDR", a)
		}
		errs.addf(at.child("cidr"), "%s", err)
	} else {
		cidr, cidrOK = c, true
	}
	v6 := cidrOK && cidr.Addr().Is6()
	if v6 {
		errs.unsupported(at.child("cidr"), whyIPv6)
	}
	if cidrOK && (!v6 && cidr.Overlaps(linkLocal4) || v6 && cidr.Overlaps(linkLocal6)) {
		errs.addf(at.child("cidr"), "%s overlaps the link-local range", cidr)
	}

	family, lo, hi, blockSize := 4, 20, 32, DefaultBlockSize
	if v6 {
		family, lo, hi, blockSize = 6, 116, 128, defaultBlockSizeV6
	}
	if s.BlockSize != 0 {
		blockSize = s.BlockSize
		if s.BlockSize < lo || s.BlockSize > hi {
			errs.addf(at.child("blockSize"), "%d: want %d to %d for an IPv%d pool", s.BlockSize, lo, hi, family)
		}
	}
	if cidrOK && !s.Disabled && cidr.Bits() > blockSize {
		errs.addf(at.child("cidr"), "a /%d pool is smaller than one of its /%d blocks", cidr.Bits(), blockSize)
	}

	ipip := checkEncap(&errs, at.child("ipipMode"), string(s.IPIPMode))
	vxlan := checkEncap(&errs, at.child("vxlanMode"), string(s.VXLANMode))
	if ipip && vxlan {
		errs.addf(at.child("vxlanMode"), "ipipMode and vxlanMode cannot both be enabled")
	}
	if ipip && v6 {
		errs.addf(at.child("ipipMode"), "IPIP is not supported on IPv6 pools")
	}
	if s.NATOutgoing {
		errs.unsupported(at.child("natOutgoing"), whyNAT)
	}
	if s.DisableBGPExport {
		errs.unsupported(at.child("disableBGPExport"), whyPoolExport)
	}

	if sel, ok := checkSelector(&errs, at.child("nodeSelector"), s.NodeSelector); ok {
		switch {
		case strings.Contains(s.NodeSelector, "global("):
			errs.addf(at.child("nodeSelector"), "global() is not valid in an IPPool's selectors")
		case !sel.IsAll():
			errs.unsupported(at.child("nodeSelector"), whyPoolSelection)
		}
	}
	if s.NamespaceSelector != "" {
		if _, ok := checkSelector(&errs, at.child("namespaceSelector"), s.NamespaceSelector); ok &&
			strings.Contains(s.NamespaceSelector, "global(") {
			errs.addf(at.child("namespaceSelector"), "global() is not valid in an IPPool's selectors")
		}
		errs.unsupported(at.child("namespaceSelector"), whyPoolSelection)
	}

	uses := make(map[IPPoolAllowedUse]bool)
	for i, u := range s.AllowedUses {
		checkOneOf(&errs, at.child("allowedUses").index(i), u, AllowedUseWorkload, AllowedUseTunnel, AllowedUseLoadBalancer)
		uses[u] = true
	}
	if uses[AllowedUseLoadBalancer] {
		if uses[AllowedUseWorkload] || uses[AllowedUseTunnel] {
			errs.addf(at.child("allowedUses"), "LoadBalancer cannot be combined with Workload or Tunnel")
		}
		if ipip || vxlan {
			errs.addf(at.child("allowedUses"), "a LoadBalancer pool cannot have IPIP or VXLAN enabled")
		}
		if s.DisableBGPExport {
			errs.addf(at.child("allowedUses"), "a LoadBalancer pool cannot disable BGP export")
		}
		if s.NodeSelector != "" && s.NodeSelector != "all()" {
			errs.addf(at.child("allowedUses"), "a LoadBalancer pool must have nodeSelector all()")
		}
		errs.unsupported(at.child("allowedUses"), whyLoadBalancer)
	}
	if uses[AllowedUseTunnel] && s.NamespaceSelector != "" {
		errs.addf(at.child("allowedUses"), "a Tunnel pool cannot have a namespaceSelector")
	}

	if m := s.AssignmentMode; m != nil &&
		checkOneOf(&errs, at.child("assignmentMode"), *m, AssignmentAutomatic, AssignmentManual) && *m == AssignmentManual {
		errs.unsupported(at.child("assignmentMode"), whyManualPool)
	}
	return errs.err()
}

// checkEncap checks an encapsulation mode and reports whether it enables encapsulation.
func checkEncap(errs *errList, at path, mode string) bool {
	if mode == "" || !checkOneOf(errs, at, mode, EncapNever, EncapAlways, EncapCrossSubnet) || mode == EncapNever {
		return false
	}
	errs.unsupported(at, whyEncapsulation)
	return true
}
