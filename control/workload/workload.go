package workload

import (
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path"
	"time"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/hostconv"
)

// DefaultIfName is the workload-side interface name when Spec.IfName is empty.
const DefaultIfName = "eth0"

// DefaultMTU is the MTU when Spec.MTU is 0 and the host has no default route to copy it from.
const DefaultMTU = 1500

// Gateway is the next hop of every workload: a link-local address that the host-side veth
// answers for (proxy ARP) and that the workload also knows by a permanent neighbour entry.
var Gateway = netip.MustParseAddr("169.254.1.1")

// Sentinel errors, tested with errors.Is.
var (
	// ErrInvalidSpec: a field of the Spec is unusable; nothing was changed.
	ErrInvalidSpec = errors.New("invalid workload spec")
	// ErrNetnsNotFound: Spec.Netns does not exist or is no network namespace.
	ErrNetnsNotFound = errors.New("network namespace not found")
	// ErrNotFound: Check found no endpoint record for the workload.
	ErrNotFound = errors.New("workload not found")
	// ErrMismatch: Check found the workload's network different from what Add set up.
	ErrMismatch = errors.New("workload network does not match its endpoint")
	// ErrInterfaceExists: the workload namespace already has an interface of that name that is
	// not this workload's veth; it is left alone.
	ErrInterfaceExists = errors.New("interface already exists in the workload namespace")
)

// Spec names a workload and where its network goes.
//
// The workload's identity is its ID. For Kubernetes it is "<namespace>.<pod>" (KubernetesID), the
// identity Calico hashes into the veth name, so a pod gets the same cali… interface under Margay
// as under Calico; a namespace holds no dots, so the ID is unique. For everything else (docker run
// --net, margayctl workload add) it is the container ID or the name the operator chose.
type Spec struct {
	ID          string            // datastore name of the workload, also its IPAM handle
	Name        string            // human name (pod name); default ID
	Namespace   string            // Kubernetes namespace, or ""
	Node        string            // the host
	ContainerID string            // the runtime's container ID, "" outside CNI
	Network     string            // the CNI network's name, "" outside CNI
	Netns       string            // path of the workload's network namespace
	IfName      string            // workload-side interface; default DefaultIfName
	MTU         int               // 0: the MTU of the host's default-route interface, else DefaultMTU
	Labels      map[string]string // policy labels
	// Ports are the workload's named ports (a pod's named container ports), which rules may
	// name.
	Ports []datastore.EndpointPort
	// Started is when the runtime's ADD began (the CNI plugin sets it): Add records the time
	// from then to the record's write in the record, for the agent's CNI latency metric. Zero
	// records nothing.
	Started time.Time
	// Log is the operation's logger; slog.Default() when nil.
	Log *slog.Logger
}

// logger returns the spec's logger, with the workload's identity.
func (s Spec) logger() *slog.Logger {
	l := s.Log
	if l == nil {
		l = slog.Default()
	}
	return l.With("workload", s.ID, "node", s.Node)
}

// KubernetesID returns the workload ID of a pod: "<namespace>.<pod>".
func KubernetesID(namespace, pod string) string { return namespace + "." + pod }

// HostVethName returns the host-side veth of the workload with the given identity: "cali" and the
// first 11 hex digits of the SHA-1 of identity, as Calico names it (identity "default.nginx" gives
// the same name as Calico's pod nginx in namespace default).
func HostVethName(identity string) string {
	sum := sha1.Sum([]byte(identity))
	return "cali" + hex.EncodeToString(sum[:])[:11]
}

// HostVeth returns the host-side veth name of the workload.
func (s Spec) HostVeth() string { return HostVethName(s.ID) }

// workloadKey returns the "<node>/<id>" that IPAM handles record.
func (s Spec) workloadKey() string { return hostconv.WorkloadKey(s.Node, s.ID) }

// withDefaults fills Name and IfName.
func (s Spec) withDefaults() Spec {
	if s.Name == "" {
		s.Name = s.ID
	}
	if s.IfName == "" {
		s.IfName = DefaultIfName
	}
	return s
}

// validateKey checks what Del needs: the ID and node that make up the keys.
func (s Spec) validateKey() error {
	if err := datastore.ValidateName(s.ID); err != nil {
		return fmt.Errorf("%w: id: %w", ErrInvalidSpec, err)
	}
	if err := datastore.ValidateName(s.Node); err != nil {
		return fmt.Errorf("%w: node: %w", ErrInvalidSpec, err)
	}
	return nil
}

// validate checks everything Add needs before it changes anything, so an invalid record can never
// fail the last step after the veth and the address exist.
func (s Spec) validate() error {
	if err := s.validateKey(); err != nil {
		return err
	}
	if s.Netns == "" || !path.IsAbs(s.Netns) {
		return fmt.Errorf("%w: netns %q: want the absolute path of a network namespace", ErrInvalidSpec, s.Netns)
	}
	if err := validIfName(s.IfName); err != nil {
		return fmt.Errorf("%w: ifname: %w", ErrInvalidSpec, err)
	}
	if s.MTU != 0 && (s.MTU < 68 || s.MTU > 65535) {
		return fmt.Errorf("%w: mtu %d outside 68..65535", ErrInvalidSpec, s.MTU)
	}
	probe := s.record(net.HardwareAddr{2, 0, 0, 0, 0, 1}, netip.MustParsePrefix("198.19.0.1/32"))
	if err := probe.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidSpec, err)
	}
	return nil
}

// record is the endpoint record of the workload.
func (s Spec) record(mac net.HardwareAddr, ip netip.Prefix) datastore.Workload {
	return datastore.Workload{
		Version:     datastore.CurrentVersion,
		ID:          s.ID,
		Name:        s.Name,
		Namespace:   s.Namespace,
		Node:        s.Node,
		IfName:      s.HostVeth(),
		ContainerID: s.ContainerID,
		Network:     s.Network,
		Netns:       s.Netns,
		MAC:         mac.String(),
		IPv4:        []netip.Prefix{ip},
		Labels:      s.Labels,
		Ports:       s.Ports,
	}
}

func validIfName(s string) error {
	if s == "" || len(s) > 15 || s == "." || s == ".." {
		return fmt.Errorf("%q: want 1 to 15 bytes", s)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c > '~' || c == '/' || c == ':' {
			return fmt.Errorf("%q: byte %d (%q) not allowed", s, i, c)
		}
	}
	return nil
}

// Result is what Add set up.
type Result struct {
	Workload datastore.Workload // the endpoint record as written
	HostVeth string             // host-side interface, cali…
	HostMAC  net.HardwareAddr   // always hostconv.VethMAC
	IfName   string             // workload-side interface
	MAC      net.HardwareAddr   // workload-side MAC
	Netns    string             // the workload's namespace
	IPv4     netip.Prefix       // the workload's /32
	Gateway  netip.Addr         // Gateway
	MTU      int                // of both ends of the veth
}

func newResult(s Spec, rec datastore.Workload, mac net.HardwareAddr, ip netip.Prefix, mtu int) Result {
	return Result{
		Workload: rec,
		HostVeth: s.HostVeth(),
		HostMAC:  hostconv.VethMAC,
		IfName:   s.IfName,
		MAC:      mac,
		Netns:    s.Netns,
		IPv4:     ip,
		Gateway:  Gateway,
		MTU:      mtu,
	}
}
