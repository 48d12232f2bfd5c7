package convert

import (
	"net/netip"
	"slices"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/resource"
)

// PoolFromV3 converts an IPPool into a pool record. Calico's defaults are filled in first;
// what differs from them, but for cidr, blockSize and disabled, is an error.
func PoolFromV3(p *resource.IPPool) (datastore.Pool, error) {
	p = p.Defaulted()
	var e fieldErrs
	checkMeta(&e, &p.ObjectMeta, nil)
	s := &p.Spec
	cidr, err := netip.ParsePrefix(s.CIDR)
	if err != nil {
		e.addf("spec.cidr", "%q is not a CIDR", s.CIDR)
	}
	uses := slices.Clone(s.AllowedUses)
	slices.Sort(uses)
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"ipipMode", s.IPIPMode != resource.EncapNever},
		{"vxlanMode", s.VXLANMode != resource.EncapNever},
		{"natOutgoing", s.NATOutgoing},
		{"disableBGPExport", s.DisableBGPExport},
		{"nodeSelector", s.NodeSelector != "all()"},
		{"namespaceSelector", s.NamespaceSelector != ""},
		{"allowedUses", !slices.Equal(uses, []resource.IPPoolAllowedUse{resource.AllowedUseTunnel, resource.AllowedUseWorkload})},
		{"assignmentMode", *s.AssignmentMode != resource.AssignmentAutomatic},
	} {
		if f.set {
			e.notYet("spec."+f.name, whyPools)
		}
	}
	out := datastore.Pool{Version: datastore.CurrentVersion, Name: p.Name, CIDR: cidr, BlockSize: s.BlockSize, Disabled: s.Disabled}
	return finish(&e, out)
}

// PoolToV3 is the IPPool of a pool record, with Calico's defaults.
func PoolToV3(p datastore.Pool) *resource.IPPool {
	out := &resource.IPPool{ObjectMeta: resource.ObjectMeta{Name: p.Name},
		Spec: resource.IPPoolSpec{CIDR: p.CIDR.String(), BlockSize: p.BlockSize, Disabled: p.Disabled}}
	return out.Defaulted()
}
