package datastore

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// kind describes how one resource type is named, decoded and checked.
type kind[T any] struct {
	name        string // singular, for metrics labels, logs and errors: "pool"
	version     func(*T) *int
	setDefaults func(*T)
	validate    func(*T) error
	// checkName validates a key name of this kind; bind fills the identity fields of a value
	// from its key name and fails when they disagree with it.
	checkName func(name string) error
	bind      func(name string, v *T) error
}

func newKind[T any, P interface {
	*T
	Resource
}](name string, checkName func(string) error, bind func(string, *T) error) *kind[T] {
	return &kind[T]{
		name:        name,
		version:     func(v *T) *int { return P(v).version() },
		setDefaults: func(v *T) { P(v).setDefaults() },
		validate:    func(v *T) error { return P(v).Validate() },
		checkName:   checkName,
		bind:        bind,
	}
}

// decode turns a stored value into a T, applies defaults, and checks it: the version, the
// identity against the key name, and Validate. Anything it returns without error passes Validate.
func (k *kind[T]) decode(name string, data []byte) (T, error) {
	var zero T
	if err := k.checkName(name); err != nil {
		return zero, fmt.Errorf("key name: %w", err)
	}
	var probe struct {
		Version *int `json:"version"`
	}
	if err := json.Unmarshal(data, &probe); err != nil {
		return zero, fmt.Errorf("decode json: %w", err)
	}
	if probe.Version == nil {
		return zero, errors.New("version is missing")
	}
	if *probe.Version != CurrentVersion {
		return zero, fmt.Errorf("version %d, want %d", *probe.Version, CurrentVersion)
	}
	var v T
	if err := json.Unmarshal(data, &v); err != nil {
		return zero, fmt.Errorf("decode json: %w", err)
	}
	k.setDefaults(&v)
	if err := k.bind(name, &v); err != nil {
		return zero, err
	}
	if err := k.validate(&v); err != nil {
		return zero, err
	}
	return v, nil
}

// encode prepares v for writing under name: version 0 becomes CurrentVersion, defaults are applied
// and empty identity fields are filled from the name, all on a copy. It refuses invalid values.
func (k *kind[T]) encode(name string, v T) ([]byte, error) {
	if err := k.checkName(name); err != nil {
		return nil, fmt.Errorf("key name: %w", err)
	}
	if ver := k.version(&v); *ver == 0 {
		*ver = CurrentVersion
	}
	k.setDefaults(&v)
	if err := k.bind(name, &v); err != nil {
		return nil, err
	}
	if err := k.validate(&v); err != nil {
		return nil, err
	}
	return json.Marshal(v)
}

// bindField fills an empty identity field from the key name, or checks that it matches it.
func bindField(field *string, what, name string) error {
	if *field == "" {
		*field = name
		return nil
	}
	if *field != name {
		return fmt.Errorf("%s %q does not match key name %q", what, *field, name)
	}
	return nil
}

// The kinds. Names of workloads depend on the store (see Client.Workloads), so they are built there.
var (
	poolKind = newKind("pool", ValidateName, func(name string, v *Pool) error {
		return bindField(&v.Name, "name", name)
	})
	bgpConfigKind = newKind("bgpconfig", checkBGPConfigName, func(string, *BGPConfig) error { return nil })
	bgpPeerKind   = newKind("bgppeer", ValidateName, func(name string, v *BGPPeer) error {
		return bindField(&v.Name, "name", name)
	})
	policyKind = newKind("policy", checkPolicyName, bindPolicy)
	tierKind   = newKind("tier", ValidateName, func(name string, v *Tier) error {
		return bindField(&v.Name, "name", name)
	})
	profileKind = newKind("profile", ValidateName, func(name string, v *Profile) error {
		return bindField(&v.Name, "name", name)
	})
	nodeKind = newKind("node", ValidateName, func(name string, v *Node) error {
		return bindField(&v.Name, "name", name)
	})
	blockKind = newKind("block", checkBlockName, func(name string, v *Block) error {
		cidr, err := ParseBlockKeyName(name)
		if err != nil {
			return err
		}
		if !v.CIDR.IsValid() {
			v.CIDR = cidr
		} else if v.CIDR != cidr {
			return fmt.Errorf("cidr %s does not match key name %q", v.CIDR, name)
		}
		return nil
	})
	handleKind = newKind("handle", ValidateName, func(name string, v *Handle) error {
		return bindField(&v.ID, "id", name)
	})
	allWorkloadsKind = newKind("workload", checkWorkloadPath, func(name string, v *Workload) error {
		node, id, _ := strings.Cut(name, "/")
		if err := bindField(&v.Node, "node", node); err != nil {
			return err
		}
		return bindField(&v.ID, "id", id)
	})
)

// kindNames are the kind labels of the metrics.
var kindNames = []string{
	poolKind.name, bgpConfigKind.name, bgpPeerKind.name, nodeKind.name, blockKind.name, handleKind.name, allWorkloadsKind.name,
	policyKind.name, tierKind.name, profileKind.name,
}

// bgpConfigName is the one name in the BGPConfig store: its key is config/bgp.
const bgpConfigName = "bgp"

func checkBGPConfigName(name string) error {
	if name != bgpConfigName {
		return fmt.Errorf("%q: the BGP configuration has the single name %q", name, bgpConfigName)
	}
	return nil
}

func checkBlockName(name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	_, err := ParseBlockKeyName(name)
	return err
}

func checkWorkloadPath(name string) error {
	node, id, ok := strings.Cut(name, "/")
	if !ok {
		return fmt.Errorf("%q: want <node>/<id>", name)
	}
	if err := ValidateName(node); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	if err := ValidateName(id); err != nil {
		return fmt.Errorf("id: %w", err)
	}
	return nil
}

// nodeWorkloadsKind is the kind of the workloads of one node, named by their ID alone.
func nodeWorkloadsKind(node string) *kind[Workload] {
	return newKind("workload", ValidateName, func(name string, v *Workload) error {
		if err := bindField(&v.Node, "node", node); err != nil {
			return err
		}
		return bindField(&v.ID, "id", name)
	})
}
