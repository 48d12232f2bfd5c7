package policy

import (
	stdmaps "maps"
	"net/netip"
	"slices"

	"github.com/margaynet/margay/maps"
)

// Incremental compilation. Compile looks at every workload and every policy; Update takes what
// changed since its last call and does the work of that change alone:
//
//   - a workload added, changed or removed: the programs of that workload (if local: its labels
//     against each policy's selector), its match set (its labels against each known match), its
//     identity and its /32;
//   - a new match (a program compiled with a rule peer no other program had): that match against
//     every workload, nothing else; a match Retain forgot: out of the sets that held it;
//   - the policy set replaced (a policy event): the programs of every local workload, and then
//     the matches that came or went, as above.
//
// Update's results are those of Compile over the same policies and workloads with the same
// compiler history, up to the numbering (TestIncrementalMatchesCompile holds them against each
// other, with the map entries and the verdicts).

// Change is a workload event for Update.
type Change struct {
	Key string
	// Endpoint is the workload as it is now; nil: gone.
	Endpoint *Endpoint
	// Local says the workload runs on this host: it gets programs.
	Local bool
}

// Delta says how an Update's Result differs from the one of the Update before it.
type Delta struct {
	// IPs are the prefixes of policy_ips whose identity changed, came or went.
	IPs []netip.Prefix
	// Identities changed their entries under the same number (their matches came back under
	// new ids): every entry of theirs is written again.
	Identities map[uint32]bool
	// Stale are the keys those identities' entries had: deleted unless still wanted.
	Stale []maps.PolicyKey
	// Endpoints are the local workload addresses whose programs came, went or changed.
	Endpoints []netip.Addr
}

type incEndpoint struct {
	ep      Endpoint
	local   bool
	progs   Programs
	set     []uint32 // the known matches it satisfies, ascending
	ident   uint32
	counted bool // it has a /32 (some match reads labels, and it is IPv4): ident is in use
}

type incState struct {
	set    *Set
	eps    map[string]*incEndpoint
	byAddr map[netip.Addr][]string // keys of the workloads holding each address, ascending
	ids    []uint32                // the matches the sets are over, ascending
	idSet  map[uint32]bool
	labels bool // some match reads labels, or some rule names peers' ports: workloads have identities
	// matchLabels says some match reads labels; portNames is the compiler's portNamesKey the
	// identities were made with.
	matchLabels bool
	portNames   string
	regions     map[netip.Prefix]uint32
	ips         map[netip.Prefix]uint32
	endpoints   map[netip.Addr]Programs
	progRefs    map[uint32]int
	identRefs   map[uint32]int
}

// Incremental reports whether Update has a base to work from: false before the first Update, and
// after Compile or a failed Update, when Update needs every workload as a change.
func (c *Compiler) Incremental() bool { return c.inc != nil }

// Pending reports whether an Update without changes would change the result: Retain forgot
// matches that identities still name.
func (c *Compiler) Pending() bool {
	return c.inc != nil && (len(c.deadMatches) > 0 || c.portNamesKey() != c.inc.portNames)
}

func (in *incState) ref(refs map[uint32]int, id uint32, n int) {
	if id == 0 {
		return
	}
	refs[id] += n
	if refs[id] <= 0 {
		delete(refs, id)
	}
}

// Update compiles the changes since the last Update under policy set s (a different *Set than
// the last one's means the policies changed). Without a base (Incremental false) changes must
// hold every workload. A failed Update leaves no base.
func (c *Compiler) Update(s *Set, changes []Change) (*Result, error) {
	first := c.inc == nil
	if first {
		c.inc = &incState{eps: map[string]*incEndpoint{}, byAddr: map[netip.Addr][]string{}, idSet: map[uint32]bool{},
			regions: map[netip.Prefix]uint32{}, ips: map[netip.Prefix]uint32{}, endpoints: map[netip.Addr]Programs{},
			progRefs: map[uint32]int{}, identRefs: map[uint32]int{}}
		clear(c.deadMatches)
		clear(c.dirtyIdents)
		clear(c.stale)
	}
	in := c.inc
	touched := map[netip.Addr]bool{} // addresses whose /32 and programs are looked at again
	needProg := map[string]bool{}
	fresh := map[string]bool{}   // new or changed workloads: their labels against every match
	needSet := map[string]bool{} // workloads whose identity is looked at again
	for _, ch := range changes {
		if old, ok := in.eps[ch.Key]; ok {
			if old.local {
				in.ref(in.progRefs, old.progs.Ingress, -1)
				in.ref(in.progRefs, old.progs.Egress, -1)
			}
			if old.counted {
				in.ref(in.identRefs, old.ident, -1)
			}
			keys := in.byAddr[old.ep.Addr]
			if i, found := slices.BinarySearch(keys, ch.Key); found {
				keys = slices.Delete(keys, i, i+1)
			}
			if len(keys) == 0 {
				delete(in.byAddr, old.ep.Addr)
			} else {
				in.byAddr[old.ep.Addr] = keys
			}
			touched[old.ep.Addr] = true
			delete(in.eps, ch.Key)
			delete(needProg, ch.Key)
			delete(fresh, ch.Key)
			delete(needSet, ch.Key)
		}
		if ch.Endpoint == nil {
			continue
		}
		in.eps[ch.Key] = &incEndpoint{ep: *ch.Endpoint, local: ch.Local}
		keys := in.byAddr[ch.Endpoint.Addr]
		if i, found := slices.BinarySearch(keys, ch.Key); !found {
			in.byAddr[ch.Endpoint.Addr] = slices.Insert(keys, i, ch.Key)
		}
		touched[ch.Endpoint.Addr] = true
		if ch.Local {
			needProg[ch.Key] = true
		}
		fresh[ch.Key], needSet[ch.Key] = true, true
	}
	if s != in.set {
		in.set = s
		for k, e := range in.eps {
			if e.local {
				needProg[k] = true
			}
		}
	}

	// Programs first: they may bring new matches.
	for _, k := range slices.Sorted(stdmaps.Keys(needProg)) {
		e := in.eps[k]
		var pg Programs
		var err error
		if pg.Ingress, err = c.program(s, &e.ep, Ingress); err == nil {
			pg.Egress, err = c.program(s, &e.ep, Egress)
		}
		if err != nil {
			c.inc = nil
			return nil, err
		}
		in.ref(in.progRefs, e.progs.Ingress, -1)
		in.ref(in.progRefs, e.progs.Egress, -1)
		in.ref(in.progRefs, pg.Ingress, 1)
		in.ref(in.progRefs, pg.Egress, 1)
		e.progs = pg
		touched[e.ep.Addr] = true
	}

	// The matches that came (new programs) or went (Retain) since the last Update.
	var added []uint32
	removed := map[uint32]bool{}
	for id := range c.deadMatches {
		if in.idSet[id] {
			removed[id] = true
		}
	}
	clear(c.deadMatches)
	if len(c.matchByID) != len(in.ids)-len(removed) {
		for id := range c.matchByID {
			if !in.idSet[id] {
				added = append(added, id)
			}
		}
		slices.Sort(added)
	}
	touchedPrefixes := map[netip.Prefix]bool{}
	if first || len(added) > 0 || len(removed) > 0 {
		in.ids = slices.DeleteFunc(in.ids, func(id uint32) bool { return removed[id] })
		for id := range removed {
			delete(in.idSet, id)
		}
		for _, id := range added {
			in.idSet[id] = true
		}
		in.ids = append(in.ids, added...)
		slices.Sort(in.ids)
		labels := false
		prefixes := map[netip.Prefix]bool{netip.PrefixFrom(netip.IPv4Unspecified(), 0): true}
		for _, id := range in.ids {
			m := c.matchByID[id]
			for _, n := range slices.Concat(m.nets, m.notNets) {
				prefixes[n] = true
			}
			labels = labels || m.sel != nil || m.notSel != nil
		}
		// The regions: the prefixes the matches name; few, and independent of the workloads.
		regions := make(map[netip.Prefix]uint32, len(prefixes))
		for p := range prefixes {
			var set []uint32
			for _, id := range in.ids {
				if c.matchByID[id].matchesRegion(p) {
					set = append(set, id)
				}
			}
			regions[p] = c.identity(set, nil)
			in.ref(in.identRefs, regions[p], 1)
		}
		for p, id := range in.regions {
			in.ref(in.identRefs, id, -1)
			if regions[p] != id {
				touchedPrefixes[p] = true
			}
		}
		for p := range regions {
			if _, ok := in.regions[p]; !ok {
				touchedPrefixes[p] = true
			}
		}
		in.regions = regions
		in.matchLabels = labels
		labels = labels || c.portNamesKey() != ""
		relabel := labels != in.labels
		in.labels = labels
		// Every workload against the new matches only.
		for k, e := range in.eps {
			if needSet[k] {
				continue
			}
			set := slices.DeleteFunc(slices.Clone(e.set), func(id uint32) bool { return removed[id] })
			for _, id := range added {
				if c.matchByID[id].matches(e.ep.Addr, &e.ep) {
					set = append(set, id)
				}
			}
			slices.Sort(set)
			if relabel || !slices.Equal(set, e.set) {
				e.set = set
				needSet[k] = true
			}
		}
	}

	// Rules that name peers' ports came or went: every workload's identity carries other ports.
	if names := c.portNamesKey(); names != in.portNames {
		in.portNames = names
		in.labels = in.matchLabels || names != ""
		for k := range in.eps {
			needSet[k] = true
		}
	}

	// The identities of the workloads whose match sets changed.
	for _, k := range slices.Sorted(stdmaps.Keys(needSet)) {
		e := in.eps[k]
		if fresh[k] {
			// A new or changed workload: its labels against every known match.
			e.set = nil
			for _, id := range in.ids {
				if c.matchByID[id].matches(e.ep.Addr, &e.ep) {
					e.set = append(e.set, id)
				}
			}
		}
		if e.counted {
			in.ref(in.identRefs, e.ident, -1)
		}
		e.counted = in.labels && e.ep.Addr.Is4()
		e.ident = 0
		if e.counted {
			e.ident = c.identity(slices.Clone(e.set), c.portsOf(&e.ep))
			in.ref(in.identRefs, e.ident, 1)
		}
		touched[e.ep.Addr] = true
	}

	var delta *Delta
	if !first {
		delta = &Delta{Identities: stdmaps.Clone(c.dirtyIdents)}
		for k := range c.stale {
			delta.Stale = append(delta.Stale, k)
		}
	}
	clear(c.dirtyIdents)
	clear(c.stale)
	setIP := func(p netip.Prefix) {
		id, ok := in.regions[p]
		if p.Bits() == 32 {
			for _, k := range slices.Backward(in.byAddr[p.Addr()]) {
				if e := in.eps[k]; e.counted {
					id, ok = e.ident, true
					break
				}
			}
		}
		old, had := in.ips[p]
		switch {
		case ok && had && old == id:
			return
		case ok:
			in.ips[p] = id
		case had:
			delete(in.ips, p)
		default:
			return
		}
		if delta != nil {
			delta.IPs = append(delta.IPs, p)
		}
	}
	for p := range touchedPrefixes {
		setIP(p)
	}
	for a := range touched {
		if a.Is4() && !touchedPrefixes[netip.PrefixFrom(a, 32)] {
			setIP(netip.PrefixFrom(a, 32))
		}
		// The programs of the address: the last local workload holding it, as Compile has it.
		var pg Programs
		local := false
		for _, k := range slices.Backward(in.byAddr[a]) {
			if e := in.eps[k]; e.local {
				pg, local = e.progs, true
				break
			}
		}
		cur, had := in.endpoints[a]
		switch {
		case local && (!had || cur != pg):
			in.endpoints[a] = pg
		case !local && had:
			delete(in.endpoints, a)
		default:
			continue
		}
		if delta != nil {
			delta.Endpoints = append(delta.Endpoints, a)
		}
	}

	res := &Result{IPs: stdmaps.Clone(in.ips), Endpoints: stdmaps.Clone(in.endpoints),
		Programs: make(map[uint32]bool, len(in.progRefs)), Identities: make(map[uint32]bool, len(in.identRefs)), Delta: delta}
	for p := range in.progRefs {
		res.Programs[p] = true
	}
	for id := range in.identRefs {
		res.Identities[id] = true
	}
	return res, nil
}
