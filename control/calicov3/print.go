package calicov3

import (
	"bytes"
	"encoding/json"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/margaynet/margay/control/resource"
)

// EncodeList writes resources of kind as the list calicoctl get -o yaml|json prints:
// apiVersion, kind <Kind>List, the revision of the read as metadata.resourceVersion, and the
// items, each as resource.Encode writes it.
func EncodeList(kind resource.Kind, items []resource.Resource, revision int64) ([]byte, error) {
	raw := make([]json.RawMessage, 0, len(items))
	for _, r := range items {
		b, err := resource.Encode(r)
		if err != nil {
			return nil, err
		}
		raw = append(raw, b)
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	err := enc.Encode(struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Items      []json.RawMessage `json:"items"`
		Metadata   map[string]string `json:"metadata"`
	}{resource.APIVersion, string(kind) + "List", raw, map[string]string{"resourceVersion": strconv.FormatInt(revision, 10)}})
	return bytes.TrimSuffix(out.Bytes(), []byte("\n")), err
}

// Table is the table calicoctl get prints for resources of kind: its header and a row per
// resource; wide adds columns (-o wide), and printNamespace a NAMESPACE column first for the
// namespaced kinds (calicoctl prints it with -A and with -n).
func Table(kind resource.Kind, items []resource.Resource, wide, printNamespace bool) ([]string, [][]string) {
	header, row := columns(kind, wide)
	var rows [][]string
	for _, r := range items {
		rows = append(rows, row(r))
	}
	if printNamespace && kind.Namespaced() {
		header = append([]string{"NAMESPACE"}, header...)
		for i, r := range items {
			rows[i] = append([]string{r.Metadata().Namespace}, rows[i]...)
		}
	}
	return header, rows
}

func columns(kind resource.Kind, wide bool) ([]string, func(resource.Resource) []string) {
	switch kind {
	case resource.KindGlobalNetworkPolicy:
		if wide {
			return []string{"NAME", "ORDER", "SELECTOR"}, func(r resource.Resource) []string {
				p := r.(*resource.GlobalNetworkPolicy)
				return []string{p.Name, order(p.Spec.Order), p.Spec.Selector}
			}
		}
	case resource.KindNetworkPolicy:
		if wide {
			return []string{"NAME", "TIER", "ORDER", "SELECTOR"}, func(r resource.Resource) []string {
				p := r.(*resource.NetworkPolicy)
				return []string{p.Name, resource.TierOrDefault(p.Spec.Tier), order(p.Spec.Order), p.Spec.Selector}
			}
		}
		return []string{"NAME", "TIER"}, func(r resource.Resource) []string {
			p := r.(*resource.NetworkPolicy)
			return []string{p.Name, resource.TierOrDefault(p.Spec.Tier)}
		}
	case resource.KindTier:
		return []string{"NAME", "ORDER"}, func(r resource.Resource) []string {
			t := r.(*resource.Tier)
			return []string{t.Name, order(t.Spec.Order)}
		}
	case resource.KindProfile:
		if wide {
			return []string{"NAME", "LABELS"}, func(r resource.Resource) []string {
				p := r.(*resource.Profile)
				var labels []string
				for _, k := range slices.Sorted(maps.Keys(p.Spec.LabelsToApply)) {
					labels = append(labels, k+"="+p.Spec.LabelsToApply[k])
				}
				return []string{p.Name, strings.Join(labels, ",")}
			}
		}
	case resource.KindIPPool:
		if wide {
			return []string{"NAME", "CIDR", "NAT", "IPIPMODE", "VXLANMODE", "DISABLED", "DISABLEBGPEXPORT", "SELECTOR"}, func(r resource.Resource) []string {
				s := r.(*resource.IPPool).Spec
				return []string{r.Metadata().Name, s.CIDR, strconv.FormatBool(s.NATOutgoing), string(s.IPIPMode), string(s.VXLANMode),
					strconv.FormatBool(s.Disabled), strconv.FormatBool(s.DisableBGPExport), s.NodeSelector}
			}
		}
		return []string{"NAME", "CIDR", "SELECTOR"}, func(r resource.Resource) []string {
			s := r.(*resource.IPPool).Spec
			return []string{r.Metadata().Name, s.CIDR, s.NodeSelector}
		}
	case resource.KindBGPPeer:
		return []string{"NAME", "PEERIP", "NODE", "ASN"}, func(r resource.Resource) []string {
			s := r.(*resource.BGPPeer).Spec
			node := s.Node
			if node == "" {
				node = "(global)"
			}
			return []string{r.Metadata().Name, s.PeerIP, node, s.ASNumber.String()}
		}
	case resource.KindBGPConfiguration:
		return []string{"NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER"}, func(r resource.Resource) []string {
			s := r.(*resource.BGPConfiguration).Spec
			return []string{r.Metadata().Name, s.LogSeverityScreen, strconv.FormatBool(s.MeshEnabled()), s.AS().String()}
		}
	case resource.KindNode:
		if wide {
			return []string{"NAME", "ASN", "IPV4", "IPV6"}, func(r resource.Resource) []string {
				n := r.(*resource.Node)
				asn, v4, v6 := "(global)", "", ""
				if b := n.Spec.BGP; b != nil {
					v4, v6 = b.IPv4Address, b.IPv6Address
					if b.ASNumber != nil {
						asn = b.ASNumber.String()
					}
				}
				return []string{n.Name, asn, v4, v6}
			}
		}
	case resource.KindWorkloadEndpoint:
		header := []string{"WORKLOAD", "NODE", "NETWORKS", "INTERFACE"}
		if wide {
			header = append([]string{"NAME"}, append(header, "PROFILES", "NATS")...)
		}
		return header, func(r resource.Resource) []string {
			s := r.(*resource.WorkloadEndpoint).Spec
			workload := s.Workload
			if s.Pod != "" {
				workload = s.Pod
			}
			row := []string{workload, s.Node, strings.Join(s.IPNetworks, ","), s.InterfaceName}
			if wide {
				row = append([]string{r.Metadata().Name}, append(row, strings.Join(s.Profiles, ","), "")...)
			}
			return row
		}
	}
	return []string{"NAME"}, func(r resource.Resource) []string { return []string{r.Metadata().Name} }
}

func order(o *float64) string {
	if o == nil {
		return ""
	}
	return strconv.FormatFloat(*o, 'f', -1, 64)
}
