package maps

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"

	"github.com/cilium/ebpf"

	"github.com/margaynet/margay/loader"
)

// errReadOnly: a routes or endpoints wrapper made without the config map, whose route
// generation every write must bump.
var errReadOnly = errors.New("map wrapper is read-only (made without the config map)")

// Endpoint is a workload as the dataplane sees it, keyed by its host-side veth.
type Endpoint struct {
	Ifindex uint32           `json:"ifindex"`
	IPv4    netip.Addr       `json:"ipv4"`
	MAC     net.HardwareAddr `json:"mac"`
	// IngressProgram and EgressProgram name the compiled policy of each direction in the policy
	// map; 0 means no policy selects the workload in that direction, which allows everything.
	IngressProgram uint32 `json:"ingressProgram,omitempty"`
	EgressProgram  uint32 `json:"egressProgram,omitempty"`
}

// Equal reports whether a and b are the same entry.
func (ep Endpoint) Equal(o Endpoint) bool {
	return ep.Ifindex == o.Ifindex && ep.IPv4 == o.IPv4 && string(ep.MAC) == string(o.MAC) &&
		ep.IngressProgram == o.IngressProgram && ep.EgressProgram == o.EgressProgram
}

// Endpoints is the endpoints map.
type Endpoints struct {
	m   *ebpf.Map
	gen *Config // bumped after every write: conntrack entries keep workloads' MACs
}

// NewEndpoints wraps a loaded endpoints map; every write bumps config's route generation, since
// conntrack entries keep workloads' MACs. With a nil config the wrapper only reads.
func NewEndpoints(m *ebpf.Map, config *Config) *Endpoints { return &Endpoints{m: m, gen: config} }

// Close releases the map.
func (e *Endpoints) Close() error { return e.m.Close() }

// Put adds or replaces the endpoint of ep.Ifindex.
func (e *Endpoints) Put(ep Endpoint) error {
	if e.gen == nil {
		return fmt.Errorf("put endpoint %d: %w", ep.Ifindex, errReadOnly)
	}
	if ep.Ifindex == 0 {
		return errors.New("put endpoint: ifindex 0")
	}
	if !ep.IPv4.Is4() {
		return fmt.Errorf("put endpoint %d: %v is not an IPv4 address", ep.Ifindex, ep.IPv4)
	}
	if len(ep.MAC) != 6 {
		return fmt.Errorf("put endpoint %d: MAC %v is not 6 bytes", ep.Ifindex, ep.MAC)
	}
	v := loader.MargayEndpoint{Ipv4: be32(ep.IPv4), IngressProgram: ep.IngressProgram, EgressProgram: ep.EgressProgram}
	copy(v.Mac[:], ep.MAC)
	if err := e.m.Put(&ep.Ifindex, &v); err != nil {
		return fmt.Errorf("put endpoint %d: %w", ep.Ifindex, err)
	}
	if err := e.gen.BumpRouteGeneration(); err != nil {
		return fmt.Errorf("put endpoint %d: %w", ep.Ifindex, err)
	}
	return nil
}

// Delete removes the endpoint of ifindex; a missing one is not an error.
func (e *Endpoints) Delete(ifindex uint32) error {
	if e.gen == nil {
		return fmt.Errorf("delete endpoint %d: %w", ifindex, errReadOnly)
	}
	if err := e.m.Delete(&ifindex); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		return fmt.Errorf("delete endpoint %d: %w", ifindex, err)
	}
	if err := e.gen.BumpRouteGeneration(); err != nil {
		return fmt.Errorf("delete endpoint %d: %w", ifindex, err)
	}
	return nil
}

// Get returns the endpoint of ifindex.
func (e *Endpoints) Get(ifindex uint32) (Endpoint, error) {
	var v loader.MargayEndpoint
	if err := e.m.Lookup(&ifindex, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Endpoint{}, fmt.Errorf("endpoint %d: %w", ifindex, ErrNotFound)
		}
		return Endpoint{}, fmt.Errorf("get endpoint %d: %w", ifindex, err)
	}
	return decodeEndpoint(ifindex, v), nil
}

func decodeEndpoint(ifindex uint32, v loader.MargayEndpoint) Endpoint {
	return Endpoint{Ifindex: ifindex, IPv4: addrFromBE32(v.Ipv4), MAC: net.HardwareAddr(v.Mac[:]),
		IngressProgram: v.IngressProgram, EgressProgram: v.EgressProgram}
}

// List returns every endpoint, sorted by ifindex.
func (e *Endpoints) List() ([]Endpoint, error) {
	var (
		k   uint32
		v   loader.MargayEndpoint
		out []Endpoint
	)
	it := e.m.Iterate()
	for it.Next(&k, &v) {
		out = append(out, decodeEndpoint(k, v))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list endpoints: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Ifindex < out[j].Ifindex })
	return out, nil
}
