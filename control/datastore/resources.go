package datastore

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"net/netip"
	"path"
	"slices"
	"strings"

	"github.com/margaynet/margay/control/hostconv"
)

// CurrentVersion is the value of the "version" field of every value this package writes and
// accepts. A value with any other version is malformed.
const CurrentVersion = 1

// Defaults that a stored value may leave out (zero means "default").
const (
	DefaultBlockSize = 26
	DefaultASN       = 64512
	MinBlockSize     = 20
	MaxBlockSize     = 32
)

// DefaultPoolCIDR is the CIDR of DefaultPool, as in Calico.
var DefaultPoolCIDR = netip.MustParsePrefix("192.168.0.0/16")

// Resource is what every stored value type implements. The unexported methods keep the set of
// kinds closed to this package.
type Resource interface {
	Validate() error
	version() *int
	setDefaults()
}

// Pool is an IP pool that IPAM cuts into blocks, at config/pools/<name>.
type Pool struct {
	Version   int          `json:"version"`
	Name      string       `json:"name"`
	CIDR      netip.Prefix `json:"cidr"`
	BlockSize int          `json:"blockSize,omitempty"` // 0 means DefaultBlockSize
	Disabled  bool         `json:"disabled,omitempty"`  // IPAM assigns nothing more from a disabled pool, nor from its blocks
}

// DefaultPool returns the pool that a fresh cluster gets: 192.168.0.0/16 in /26 blocks.
func DefaultPool() Pool {
	return Pool{Version: CurrentVersion, Name: "default-ipv4-ippool", CIDR: DefaultPoolCIDR, BlockSize: DefaultBlockSize}
}

// Validate reports the first thing wrong with p.
func (p Pool) Validate() error {
	if err := checkVersion(p.Version); err != nil {
		return err
	}
	if err := ValidateName(p.Name); err != nil {
		return fmt.Errorf("name: %w", err)
	}
	if err := checkPrefix4("cidr", p.CIDR); err != nil {
		return err
	}
	if p.BlockSize < MinBlockSize || p.BlockSize > MaxBlockSize {
		return fmt.Errorf("blockSize %d outside %d..%d", p.BlockSize, MinBlockSize, MaxBlockSize)
	}
	if p.BlockSize < p.CIDR.Bits() {
		return fmt.Errorf("blockSize %d is shorter than the pool's /%d", p.BlockSize, p.CIDR.Bits())
	}
	return nil
}

func (p *Pool) version() *int { return &p.Version }

func (p *Pool) setDefaults() {
	if p.BlockSize == 0 {
		p.BlockSize = DefaultBlockSize
	}
}

// BGPConfig holds the cluster-wide BGP settings, at config/bgp.
type BGPConfig struct {
	Version        int    `json:"version"`
	ASN            uint32 `json:"asn,omitempty"`            // 0 means DefaultASN
	NodeToNodeMesh *bool  `json:"nodeToNodeMesh,omitempty"` // nil means true
}

// DefaultBGPConfig returns the settings in force when config/bgp does not exist: AS 64512 and a
// node-to-node full mesh.
func DefaultBGPConfig() BGPConfig {
	c := BGPConfig{Version: CurrentVersion}
	c.setDefaults()
	return c
}

// MeshEnabled says whether every node peers with every other node.
func (c BGPConfig) MeshEnabled() bool { return c.NodeToNodeMesh == nil || *c.NodeToNodeMesh }

// Validate reports the first thing wrong with c.
func (c BGPConfig) Validate() error {
	if err := checkVersion(c.Version); err != nil {
		return err
	}
	return checkASN("asn", c.ASN, false)
}

func (c *BGPConfig) version() *int { return &c.Version }

func (c *BGPConfig) setDefaults() {
	if c.ASN == 0 {
		c.ASN = DefaultASN
	}
	if c.NodeToNodeMesh == nil {
		mesh := true
		c.NodeToNodeMesh = &mesh
	}
}

// EffectiveASN is the AS number node n speaks BGP with: its own, else the cluster's (cfg's, else
// DefaultASN when cfg sets none, as the zero BGPConfig of a cluster without config/bgp). This is
// the one statement of the rule; the speaker's AS, its mesh peers' and margayctl node list's
// all follow it.
func EffectiveASN(n Node, cfg BGPConfig) uint32 {
	switch {
	case n.ASN != 0:
		return n.ASN
	case cfg.ASN != 0:
		return cfg.ASN
	}
	return DefaultASN
}

// BGPPeer is an explicit BGP peer (a gateway router, a route reflector outside the cluster), at
// bgp/peers/<name>.
type BGPPeer struct {
	Version  int        `json:"version"`
	Name     string     `json:"name"`
	PeerIP   netip.Addr `json:"peerIP"`
	ASN      uint32     `json:"asn"`
	Node     string     `json:"node,omitempty"`     // "" = every node peers with PeerIP
	Password string     `json:"password,omitempty"` // TCP MD5 secret, "" = none
	// Accept lists prefixes this peer may send besides those inside the pools, matched exactly:
	// a gateway's 0.0.0.0/0, or the networks behind it.
	Accept []netip.Prefix `json:"accept,omitempty"`
}

// Validate reports the first thing wrong with p.
func (p BGPPeer) Validate() error {
	if err := checkVersion(p.Version); err != nil {
		return err
	}
	if err := ValidateName(p.Name); err != nil {
		return fmt.Errorf("name: %w", err)
	}
	if !p.PeerIP.IsValid() {
		return errors.New("peerIP is missing")
	}
	if p.PeerIP.IsUnspecified() || p.PeerIP.Is4In6() || p.PeerIP.Zone() != "" {
		return fmt.Errorf("peerIP %s: want a plain unicast address", p.PeerIP)
	}
	if err := checkASN("asn", p.ASN, false); err != nil {
		return err
	}
	if p.Node != "" {
		if err := ValidateName(p.Node); err != nil {
			return fmt.Errorf("node: %w", err)
		}
	}
	if len(p.Password) > 80 {
		return fmt.Errorf("password is %d bytes, TCP MD5 allows 80", len(p.Password))
	}
	for i, a := range p.Accept {
		if err := checkPrefix4(fmt.Sprintf("accept[%d]", i), a); err != nil {
			return err
		}
	}
	return nil
}

func (p *BGPPeer) version() *int { return &p.Version }
func (p *BGPPeer) setDefaults() {
	if len(p.Accept) == 0 {
		p.Accept = nil
	}
}

// Node is a host of the cluster, registered by its agent, at nodes/<name>.
type Node struct {
	Version                 int               `json:"version"`
	Name                    string            `json:"name"`
	AddressV4               netip.Prefix      `json:"addressV4"`        // uplink address with its prefix length, e.g. 198.18.0.1/24
	Uplink                  string            `json:"uplink,omitempty"` // uplink interface, e.g. ens32
	ASN                     uint32            `json:"asn,omitempty"`    // 0 = the cluster's ASN
	RouteReflectorClusterID string            `json:"routeReflectorClusterID,omitempty"`
	Labels                  map[string]string `json:"labels,omitempty"`
}

// Validate reports the first thing wrong with n.
func (n Node) Validate() error {
	if err := checkVersion(n.Version); err != nil {
		return err
	}
	if err := ValidateName(n.Name); err != nil {
		return fmt.Errorf("name: %w", err)
	}
	if !n.AddressV4.IsValid() {
		return errors.New("addressV4 is missing")
	}
	if a := n.AddressV4.Addr(); !a.Is4() || a.IsUnspecified() || a.IsMulticast() {
		return fmt.Errorf("addressV4 %s: want a unicast IPv4 address/prefix", n.AddressV4)
	}
	if n.Uplink != "" {
		if err := checkIfName(n.Uplink); err != nil {
			return fmt.Errorf("uplink: %w", err)
		}
	}
	if err := checkASN("asn", n.ASN, true); err != nil {
		return err
	}
	if id := n.RouteReflectorClusterID; id != "" {
		if a, err := netip.ParseAddr(id); err != nil || !a.Is4() {
			return fmt.Errorf("routeReflectorClusterID %q: want an IPv4 dotted quad", id)
		}
	}
	return checkLabels(n.Labels)
}

func (n *Node) version() *int { return &n.Version }
func (n *Node) setDefaults()  { n.Labels = nilIfEmpty(n.Labels) }

// Allocation is one address handed out of a block, and the handle that holds it.
type Allocation struct {
	IP     netip.Addr `json:"ip"`
	Handle string     `json:"handle"`
}

// Block is an IPAM block, at ipam/blocks/<BlockKeyName(cidr)>. It is changed only by
// compare-and-swap on its ModRevision (Store.Update), so no address is handed out twice.
type Block struct {
	Version     int          `json:"version"`
	CIDR        netip.Prefix `json:"cidr"`
	Affinity    string       `json:"affinity,omitempty"` // "host:<node>", or "" for an orphaned block
	Allocations []Allocation `json:"allocations,omitempty"`
	Seq         uint64       `json:"seq,omitempty"` // bumped on every change, for humans and debugging
}

// AffinityForNode returns the Affinity of a block owned by node.
func AffinityForNode(node string) string { return "host:" + node }

// Node returns the node named by the block's affinity, or "".
func (b Block) Node() string { return strings.TrimPrefix(b.Affinity, "host:") }

// Validate reports the first thing wrong with b: every allocation must lie in the CIDR and no
// address may appear twice.
func (b Block) Validate() error {
	if err := checkVersion(b.Version); err != nil {
		return err
	}
	if err := checkPrefix4("cidr", b.CIDR); err != nil {
		return err
	}
	if b.CIDR.Bits() < MinBlockSize {
		return fmt.Errorf("cidr %s: blocks are /%d to /%d", b.CIDR, MinBlockSize, MaxBlockSize)
	}
	if b.Affinity != "" {
		node, ok := strings.CutPrefix(b.Affinity, "host:")
		if !ok {
			return fmt.Errorf("affinity %q: want \"host:<node>\" or empty", b.Affinity)
		}
		if err := ValidateName(node); err != nil {
			return fmt.Errorf("affinity %q: node: %w", b.Affinity, err)
		}
	}
	seen := make(map[netip.Addr]int, len(b.Allocations))
	for i, a := range b.Allocations {
		if !a.IP.IsValid() {
			return fmt.Errorf("allocations[%d]: ip is missing", i)
		}
		if !b.CIDR.Contains(a.IP) {
			return fmt.Errorf("allocations[%d]: ip %s is outside %s", i, a.IP, b.CIDR)
		}
		if j, dup := seen[a.IP]; dup {
			return fmt.Errorf("allocations[%d]: ip %s already allocated in allocations[%d]", i, a.IP, j)
		}
		seen[a.IP] = i
		if err := ValidateName(a.Handle); err != nil {
			return fmt.Errorf("allocations[%d]: handle: %w", i, err)
		}
	}
	return nil
}

func (b *Block) version() *int { return &b.Version }
func (b *Block) setDefaults() {
	if len(b.Allocations) == 0 {
		b.Allocations = nil
	}
}

// BlockKeyName returns the key name of the block with the given CIDR: "198.19.0.0/26" becomes
// "198.19.0.0-26".
func BlockKeyName(cidr netip.Prefix) string {
	return cidr.Addr().String() + "-" + fmt.Sprint(cidr.Bits())
}

// ParseBlockKeyName is the inverse of BlockKeyName. It accepts only the canonical form.
func ParseBlockKeyName(name string) (netip.Prefix, error) {
	i := strings.LastIndexByte(name, '-')
	if i < 0 {
		return netip.Prefix{}, fmt.Errorf("parse block name %q: want <address>-<bits>", name)
	}
	p, err := netip.ParsePrefix(name[:i] + "/" + name[i+1:])
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("parse block name %q: %w", name, err)
	}
	if BlockKeyName(p) != name || p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("parse block name %q: not canonical (want %q)", name, BlockKeyName(p.Masked()))
	}
	return p, nil
}

// Handle records which addresses one workload holds, at ipam/handles/<id>, so that CNI DEL and
// garbage collection free exactly those.
type Handle struct {
	Version  int          `json:"version"`
	ID       string       `json:"id"`
	Node     string       `json:"node"`
	IPs      []netip.Addr `json:"ips,omitempty"`
	Workload string       `json:"workload,omitempty"` // "<node>/<id>" of the workload, if known
}

// Validate reports the first thing wrong with h.
func (h Handle) Validate() error {
	if err := checkVersion(h.Version); err != nil {
		return err
	}
	if err := ValidateName(h.ID); err != nil {
		return fmt.Errorf("id: %w", err)
	}
	if err := ValidateName(h.Node); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	seen := make(map[netip.Addr]int, len(h.IPs))
	for i, ip := range h.IPs {
		if !ip.Is4() {
			return fmt.Errorf("ips[%d]: %q is not an IPv4 address", i, ip)
		}
		if j, dup := seen[ip]; dup {
			return fmt.Errorf("ips[%d]: %s repeats ips[%d]", i, ip, j)
		}
		seen[ip] = i
	}
	if h.Workload != "" {
		node, id, ok := strings.Cut(h.Workload, "/")
		if !ok || ValidateName(node) != nil || ValidateName(id) != nil {
			return fmt.Errorf("workload %q: want <node>/<id>", h.Workload)
		}
	}
	return nil
}

func (h *Handle) version() *int { return &h.Version }
func (h *Handle) setDefaults() {
	if len(h.IPs) == 0 {
		h.IPs = nil
	}
}

// Workload is a workload endpoint (a container's veth and addresses), at workloads/<node>/<id>.
type Workload struct {
	Version     int    `json:"version"`
	ID          string `json:"id"`
	Name        string `json:"name"`
	Namespace   string `json:"namespace,omitempty"`
	Node        string `json:"node"`
	IfName      string `json:"ifName"` // host side of the veth: "cali" + 11 hex digits
	ContainerID string `json:"containerID,omitempty"`
	// Network is the name of the CNI network that attached the workload (the network config's
	// "name"); CNI GC of a network touches only its own workloads. Empty for workloads of
	// margayctl and for records written before margay-cni recorded it (see cmdGC).
	Network string `json:"network,omitempty"`
	Netns   string `json:"netns,omitempty"`
	MAC     string `json:"mac"` // workload side of the veth
	// IPv4 is a list, as Calico's ipNetworks is, of at most one /32: a workload has one veth and
	// one address (see Addr).
	IPv4   []netip.Prefix    `json:"ipv4,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
	// Profiles name the profiles the workload takes labels and, after every tier, rules from,
	// in order (Calico's profiles: a Docker network's, a namespace's). A workload without
	// profiles allows what no tier decides.
	Profiles []string `json:"profiles,omitempty"`
	// Ports are its named ports (a pod's container ports), which rules may name.
	Ports []EndpointPort `json:"ports,omitempty"`
	// AddDurationSeconds is how long the CNI plugin's ADD took up to writing this record; the
	// agent observes it into margay_cni_add_duration_seconds. 0 = not measured.
	AddDurationSeconds float64 `json:"addDurationSeconds,omitempty"`
}

// Validate reports the first thing wrong with w.
func (w Workload) Validate() error {
	if err := checkVersion(w.Version); err != nil {
		return err
	}
	if err := ValidateName(w.ID); err != nil {
		return fmt.Errorf("id: %w", err)
	}
	if err := ValidateName(w.Node); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	if w.Name == "" {
		return errors.New("name is empty")
	}
	if err := checkPrintable(w.Name); err != nil {
		return fmt.Errorf("name: %w", err)
	}
	if err := checkPrintable(w.Namespace); err != nil {
		return fmt.Errorf("namespace: %w", err)
	}
	if !hostconv.IsVethName(w.IfName) {
		return fmt.Errorf("ifName %q: want \"cali\" and 11 lowercase hex digits", w.IfName)
	}
	if err := checkPrintable(w.ContainerID); err != nil {
		return fmt.Errorf("containerID: %w", err)
	}
	if w.Network != "" {
		if err := ValidateName(w.Network); err != nil {
			return fmt.Errorf("network: %w", err)
		}
	}
	if w.Netns != "" && (!path.IsAbs(w.Netns) || checkPrintable(w.Netns) != nil) {
		return fmt.Errorf("netns %q: want an absolute path", w.Netns)
	}
	if hw, err := net.ParseMAC(w.MAC); err != nil || len(hw) != 6 {
		return fmt.Errorf("mac %q: want an Ethernet address like 02:42:c6:13:00:02", w.MAC)
	}
	for i, p := range w.IPv4 {
		if !p.IsValid() || !p.Addr().Is4() || p.Bits() != 32 {
			return fmt.Errorf("ipv4[%d]: %q is not an IPv4 /32", i, p)
		}
	}
	if len(w.IPv4) > 1 {
		return fmt.Errorf("ipv4 %v: a workload has one address (one veth, one /32), not %d", w.IPv4, len(w.IPv4))
	}
	if !(w.AddDurationSeconds >= 0) || math.IsInf(w.AddDurationSeconds, 0) {
		return fmt.Errorf("addDurationSeconds %v: want a non-negative number of seconds", w.AddDurationSeconds)
	}
	if err := checkProfileNames(w.Profiles); err != nil {
		return err
	}
	if len(w.Ports) > MaxMatchesPerList {
		return fmt.Errorf("ports: %d, limit %d", len(w.Ports), MaxMatchesPerList)
	}
	for i, p := range w.Ports {
		if err := p.validate(); err != nil {
			return fmt.Errorf("ports[%d]: %w", i, err)
		}
	}
	return checkLabels(w.Labels)
}

// Addr is the workload's address; false for a record without one, which nothing programs.
func (w Workload) Addr() (netip.Addr, bool) {
	if len(w.IPv4) == 0 {
		return netip.Addr{}, false
	}
	return w.IPv4[0].Addr(), true
}

func (w *Workload) version() *int { return &w.Version }
func (w *Workload) setDefaults() {
	w.Labels = nilIfEmpty(w.Labels)
	if len(w.IPv4) == 0 {
		w.IPv4 = nil
	}
	if len(w.Profiles) == 0 {
		w.Profiles = nil
	}
	if len(w.Ports) == 0 {
		w.Ports = nil
	}
}

// ValidateName checks one segment of a key: a resource name, node name or ID. It must be
// non-empty, at most 253 bytes of printable ASCII without spaces, and contain neither "/" nor "..".
func ValidateName(s string) error {
	switch {
	case s == "":
		return errors.New("empty")
	case len(s) > 253:
		return fmt.Errorf("%d bytes long, limit 253", len(s))
	case strings.Contains(s, ".."):
		return fmt.Errorf("%q contains \"..\"", s)
	case s == ".":
		return errors.New(`"." is not a name`)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c > '~' || c == '/' {
			return fmt.Errorf("%q: byte %d (%q) not allowed", s, i, c)
		}
	}
	return nil
}

func checkVersion(v int) error {
	if v != CurrentVersion {
		return fmt.Errorf("version %d, want %d", v, CurrentVersion)
	}
	return nil
}

func checkPrefix4(field string, p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return fmt.Errorf("%s is missing", field)
	case !p.Addr().Is4():
		return fmt.Errorf("%s %s: not IPv4", field, p)
	case p.Masked() != p:
		return fmt.Errorf("%s %s has host bits set (want %s)", field, p, p.Masked())
	}
	return nil
}

// checkASN rejects 0 (unless zeroOK), AS_TRANS and the reserved last ASNs.
func checkASN(field string, asn uint32, zeroOK bool) error {
	switch asn {
	case 0:
		if zeroOK {
			return nil
		}
		return fmt.Errorf("%s is missing", field)
	case 23456, 65535, 4294967295:
		return fmt.Errorf("%s %d is reserved", field, asn)
	}
	return nil
}

func checkIfName(s string) error {
	if s == "" || len(s) > 15 {
		return fmt.Errorf("%q: want 1 to 15 bytes", s)
	}
	if s == "." || s == ".." {
		return fmt.Errorf("%q is not an interface name", s)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c > '~' || c == '/' || c == ':' {
			return fmt.Errorf("%q: byte %d (%q) not allowed", s, i, c)
		}
	}
	return nil
}

func checkPrintable(s string) error {
	for i, r := range s {
		if r < ' ' || r == 0x7f || r == '\uFFFD' {
			return fmt.Errorf("%q: character %d (%q) not allowed", s, i, r)
		}
	}
	return nil
}

func checkLabels(m map[string]string) error {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		v := m[k]
		if k == "" {
			return errors.New("labels: empty key")
		}
		if err := checkPrintable(k); err != nil {
			return fmt.Errorf("labels: key: %w", err)
		}
		if err := checkPrintable(v); err != nil {
			return fmt.Errorf("labels[%q]: %w", k, err)
		}
	}
	return nil
}

func nilIfEmpty(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return m
}
