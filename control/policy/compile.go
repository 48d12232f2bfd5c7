package policy

import (
	"cmp"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/maps"
)

// The compiled form, as the BPF programs look it up (bpf/include/policy.h):
//
//   - Every address has an identity: the set of rule peer matches (nets, selectors) it
//     satisfies. policy_ips maps prefixes to identities: 0.0.0.0/0, every CIDR the rules name,
//     and every workload's /32.
//   - A local workload's direction gets a program: the ordered rules of the policies that select
//     it, with the conditions on its own end already decided. The policy map holds, for each
//     program and identity, the first-match result as an LPM over protocol and destination port;
//     where the result also depends on the source port, the entry names a source-port table.
//
// Identities, programs and tables are numbered by a hash of their content, so that an agent that
// restarts numbers them as before and rewrites nothing. Rule ids index the rule_hits array and are
// handed out in order.

// Programs are the compiled policy of one local workload; 0 means no policy selects it in that
// direction.
type Programs struct {
	Ingress, Egress uint32
}

// Result is a compiled policy state.
type Result struct {
	IPs       map[netip.Prefix]uint32 // policy_ips
	Endpoints map[netip.Addr]Programs // by local workload address
	// Programs and Identities in use, for Compiler.Entries.
	Programs   map[uint32]bool
	Identities map[uint32]bool
	// Delta is how the result of an Update differs from the previous Update's; nil from
	// Compile and from an Update without a base.
	Delta *Delta
}

// progRule is a step of a program: a rule, its own end decided and its peer reduced to a match
// id, or the end of a tier or of the profiles.
type progRule struct {
	id       uint32 // rule id; 0 for an end
	action   action
	end      end
	group    int
	proto    uint8
	notProto uint8 // 0: none
	dports   intervals
	sports   intervals
	// peerPorts, when set, are the ports at the peer's end (the destination's for egress, the
	// source's for ingress), which name ports: resolved per identity.
	peerPorts *portSpec
	peerDst   bool   // the peer's end is the destination (egress)
	match     uint32 // 0: any peer
}

// takes says whether the rule applies to protocol proto at all (its ports aside).
func (r *progRule) takes(proto uint8) bool { return takesProto(r.proto, r.notProto, proto) }

// cell is what a (program, identity, protocol, port) entry says: the action, the rule to count,
// and a Log rule that matched before it.
type cell struct {
	action maps.PolicyAction
	rule   uint32
	log    uint32
}

// Compiler keeps the numbering of identities, programs, tables and rules across compilations.
// It is not safe for concurrent use.
type Compiler struct {
	matches   map[string]uint32 // match key -> id
	matchByID map[uint32]match
	nextMatch uint32

	identities map[uint32]string                   // id -> content
	identityOf map[string]uint32                   // content -> id
	identSet   map[uint32][]uint32                 // id -> sorted match ids
	identPorts map[uint32][]datastore.EndpointPort // id -> the named ports of its workloads

	programs  map[uint32]string
	programOf map[string]uint32
	progRules map[uint32][]progRule
	// portNames are the names the programs' rules give peers' ports, with how many rules give
	// them: identities carry the ports of those names.
	portNames map[string]int

	tables  map[uint32]string
	tableOf map[string]uint32
	tableAt map[uint32][]tableEntry

	ruleOf   map[string]uint32 // rule text -> id
	ruleRefs map[uint32]RuleRef
	freeIDs  []uint32
	nextRule uint32
	maxRules uint32
	newRules []uint32

	// cells caches the entries of (program, identity) pairs, by program and identity;
	// tableRefs counts the cached entries that name each source-port table.
	cells     map[uint32]map[uint32]*cellEntries
	tableRefs map[uint32]int

	// Incremental compilation (Update): the state of the last Update, nil after Compile or a
	// failed Update; the matches Retain forgot since; the identities whose entries changed under
	// the same number and the entries they had, for the next Result.
	inc         *incState
	deadMatches map[uint32]bool
	dirtyIdents map[uint32]bool
	stale       map[maps.PolicyKey]bool
	rulesGen    uint64 // counts changes of the rule ids in use, for Rules' callers
}

// cellEntries are the policy map entries of one (program, identity) pair.
type cellEntries struct {
	keys []maps.PolicyKey
	vals []maps.PolicyValue
}

type tableEntry struct {
	lo, hi uint16
	c      cell
}

// NewCompiler makes a compiler for a rule_hits array of maxRules entries (rule 0 is reserved).
func NewCompiler(maxRules uint32) *Compiler {
	return &Compiler{matches: map[string]uint32{}, matchByID: map[uint32]match{},
		identities: map[uint32]string{}, identityOf: map[string]uint32{}, identSet: map[uint32][]uint32{},
		identPorts: map[uint32][]datastore.EndpointPort{}, portNames: map[string]int{},
		programs: map[uint32]string{}, programOf: map[string]uint32{}, progRules: map[uint32][]progRule{},
		tables: map[uint32]string{}, tableOf: map[string]uint32{}, tableAt: map[uint32][]tableEntry{},
		ruleOf: map[string]uint32{}, ruleRefs: map[uint32]RuleRef{}, nextRule: 1, maxRules: maxRules,
		cells: map[uint32]map[uint32]*cellEntries{}, tableRefs: map[uint32]int{},
		deadMatches: map[uint32]bool{}, dirtyIdents: map[uint32]bool{}, stale: map[maps.PolicyKey]bool{}}
}

// ErrTooManyRules says the rule_hits array has no room for another rule id.
var ErrTooManyRules = errors.New("more distinct rules than the rule_hits map holds")

// number gives content an id from its hash, probing past ids other content holds.
func number(content string, byID map[uint32]string, mask, set uint32) uint32 {
	h := fnv.New32a()
	h.Write([]byte(content))
	id := h.Sum32()&mask | set
	for {
		if id&mask != 0 {
			if have, ok := byID[id]; !ok || have == content {
				return id
			}
		}
		id = (id+1)&mask | set
	}
}

func (c *Compiler) matchID(m match) uint32 {
	if m.any() {
		return 0
	}
	k := m.key()
	if id, ok := c.matches[k]; ok {
		return id
	}
	c.nextMatch++
	id := c.nextMatch
	c.matches[k] = id
	c.matchByID[id] = m
	return id
}

func (c *Compiler) ruleID(r *rule) (uint32, error) {
	if id, ok := c.ruleOf[r.text]; ok {
		return id, nil
	}
	var id uint32
	switch {
	case len(c.freeIDs) > 0:
		id = c.freeIDs[len(c.freeIDs)-1]
		c.freeIDs = c.freeIDs[:len(c.freeIDs)-1]
	case c.nextRule < c.maxRules:
		id = c.nextRule
		c.nextRule++
	default:
		return 0, ErrTooManyRules
	}
	c.ruleOf[r.text] = id
	c.ruleRefs[id] = r.ref
	c.newRules = append(c.newRules, id)
	c.rulesGen++
	return id, nil
}

// TakeNewRules returns the rule ids handed out since the last call: their hit counters must be
// zeroed before the entries naming them are written.
func (c *Compiler) TakeNewRules() []uint32 {
	out := c.newRules
	c.newRules = nil
	return out
}

// RulesGeneration changes whenever the rule ids in use change: Rules' answer is the same while it
// stays.
func (c *Compiler) RulesGeneration() uint64 { return c.rulesGen }

// Rules returns every rule id in use and its rule.
func (c *Compiler) Rules() map[uint32]RuleRef {
	out := make(map[uint32]RuleRef, len(c.ruleRefs))
	for id, r := range c.ruleRefs {
		out[id] = r
	}
	return out
}

// program compiles the walk of a local workload into a program id; 0 when nothing applies.
func (c *Compiler) program(s *Set, ep *Endpoint, dir Direction) (uint32, error) {
	steps := s.walk(ep, dir)
	if steps == nil {
		return 0, nil
	}
	var (
		prs  []progRule
		text strings.Builder
	)
	for _, st := range steps {
		if st.r == nil {
			prs = append(prs, progRule{end: st.end, group: st.group, dports: allPorts, sports: allPorts})
			fmt.Fprintf(&text, "end %d %d|", st.end, st.group)
			continue
		}
		r := st.r
		if !r.local.matches(ep.Addr, ep) {
			continue // its condition on the workload's own end never holds
		}
		id, err := c.ruleID(r)
		if err != nil {
			return 0, err
		}
		pr := progRule{id: id, action: r.action, group: st.group, proto: r.proto, notProto: r.notProto,
			match: c.matchID(r.peer)}
		// The workload's own end's named ports are known now; the peer's wait for its identity.
		own, peer := &r.dst, &r.src
		if dir == Egress {
			own, peer = peer, own
		}
		ownSet := own.set(r.proto, ep.Ports)
		pr.dports, pr.sports = ownSet, peer.set(r.proto, nil)
		if dir == Egress {
			pr.dports, pr.sports = pr.sports, pr.dports
		}
		if peer.named() {
			pr.peerPorts, pr.peerDst = peer, dir == Egress
		}
		prs = append(prs, pr)
		fmt.Fprintf(&text, "%s g%d own=%v|", r.text, st.group, ownSet)
	}
	content := text.String()
	if id, ok := c.programOf[content]; ok {
		return id, nil
	}
	id := number("program "+content, c.programs, 0x7fffffff, 0)
	c.programs[id] = content
	c.programOf[content] = id
	c.progRules[id] = prs
	for _, pr := range prs {
		if pr.peerPorts != nil {
			for _, n := range slices.Concat(pr.peerPorts.names, pr.peerPorts.notNames) {
				c.portNames[n]++
			}
		}
	}
	return id, nil
}

// portsOf are the named ports of ep that the programs' rules name: part of its identity.
func (c *Compiler) portsOf(ep *Endpoint) []datastore.EndpointPort {
	var out []datastore.EndpointPort
	for _, p := range ep.Ports {
		if c.portNames[p.Name] > 0 {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b datastore.EndpointPort) int {
		return cmp.Or(strings.Compare(a.Name, b.Name), cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port))
	})
	return slices.Compact(out)
}

// portNamesKey is the text of the port names in use: identities change when it does.
func (c *Compiler) portNamesKey() string {
	var names []string
	for n, k := range c.portNames {
		if k > 0 {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return strings.Join(names, ",")
}

func (c *Compiler) identity(set []uint32, ports []datastore.EndpointPort) uint32 {
	var b strings.Builder
	for _, m := range set {
		fmt.Fprintf(&b, "%s;", c.matchKey(m))
	}
	for _, p := range ports {
		fmt.Fprintf(&b, "port %s %d %d;", p.Name, p.Protocol, p.Port)
	}
	content := b.String()
	if id, ok := c.identityOf[content]; ok {
		if !slices.Equal(c.identSet[id], set) {
			// The same matches under new ids (a policy removed and added again): the content,
			// and so the id, stays; what the cells were built from does not.
			c.identSet[id] = set
			for p := range c.cells {
				c.dropCell(p, id, true)
			}
		}
		return id
	}
	id := number("identity "+content, c.identities, 0xffffffff, 0)
	c.identities[id] = content
	c.identityOf[content] = id
	c.identSet[id] = set
	c.identPorts[id] = ports
	return id
}

func (c *Compiler) matchKey(id uint32) string { return c.matchByID[id].key() }

// Compile computes the programs of the local workloads and the identities of every address.
// all holds every workload in the cluster, local the ones on this host.
//
// Compile is the reference that Update is held against; it leaves no state for Update.
func (c *Compiler) Compile(s *Set, all []Endpoint, local []Endpoint) (*Result, error) {
	c.inc = nil
	clear(c.deadMatches)
	clear(c.dirtyIdents)
	clear(c.stale)
	res := &Result{IPs: map[netip.Prefix]uint32{}, Endpoints: map[netip.Addr]Programs{},
		Programs: map[uint32]bool{}, Identities: map[uint32]bool{}}
	for i := range local {
		ep := &local[i]
		var pg Programs
		var err error
		if pg.Ingress, err = c.program(s, ep, Ingress); err != nil {
			return nil, err
		}
		if pg.Egress, err = c.program(s, ep, Egress); err != nil {
			return nil, err
		}
		res.Endpoints[ep.Addr] = pg
		for _, p := range []uint32{pg.Ingress, pg.Egress} {
			if p == 0 {
				continue
			}
			res.Programs[p] = true
		}
	}

	// Identities record every match the compiler knows: the ones these programs use, and the
	// ones of programs still in the maps until Retain, so that an old program reads a new
	// identity right while endpoints move to their new programs.
	// The prefixes whose identities differ: /0, the nets the matches name, and workloads when any
	// match looks at labels.
	ids := slices.Sorted(func(yield func(uint32) bool) {
		for id := range c.matchByID {
			if !yield(id) {
				return
			}
		}
	})
	prefixes := map[netip.Prefix]bool{netip.PrefixFrom(netip.IPv4Unspecified(), 0): true}
	labels := false
	for _, id := range ids {
		m := c.matchByID[id]
		for _, n := range slices.Concat(m.nets, m.notNets) {
			prefixes[n] = true
		}
		labels = labels || m.sel != nil || m.notSel != nil
	}
	for p := range prefixes {
		var set []uint32
		for _, id := range ids {
			if c.matchByID[id].matchesRegion(p) {
				set = append(set, id)
			}
		}
		ident := c.identity(set, nil)
		res.IPs[p] = ident
		res.Identities[ident] = true
	}
	if labels || c.portNamesKey() != "" {
		for i := range all {
			ep := &all[i]
			if !ep.Addr.Is4() {
				continue
			}
			var set []uint32
			for _, id := range ids {
				if c.matchByID[id].matches(ep.Addr, ep) {
					set = append(set, id)
				}
			}
			ident := c.identity(set, c.portsOf(ep))
			res.IPs[netip.PrefixFrom(ep.Addr, 32)] = ident
			res.Identities[ident] = true
		}
	}
	return res, nil
}

// Entries returns the policy map entries of the given programs for the given identities, and of
// the source-port tables they name.
func (c *Compiler) Entries(programs, identities map[uint32]bool) map[maps.PolicyKey]maps.PolicyValue {
	out := map[maps.PolicyKey]maps.PolicyValue{}
	tables := map[uint32]bool{}
	for p := range programs {
		if _, ok := c.progRules[p]; !ok {
			continue
		}
		for ident := range identities {
			if _, ok := c.identSet[ident]; !ok {
				continue
			}
			ce := c.cell(p, ident)
			for i, key := range ce.keys {
				v := ce.vals[i]
				out[key] = v
				if v.Action == maps.ActionSourcePort {
					tables[v.Rule] = true
				}
			}
		}
	}
	for t := range tables {
		for _, e := range c.tableAt[t] {
			for _, blk := range prefixBlocks(e.lo, e.hi) {
				out[maps.PolicyKey{Program: t, Port: blk.port, PortBits: blk.bits}] = e.c.value()
			}
		}
	}
	return out
}

// cell returns the entries of program p for identity ident, compiled once.
func (c *Compiler) cell(p, ident uint32) *cellEntries {
	byIdent := c.cells[p]
	if byIdent == nil {
		byIdent = map[uint32]*cellEntries{}
		c.cells[p] = byIdent
	}
	if ce, ok := byIdent[ident]; ok {
		return ce
	}
	ce := &cellEntries{}
	ce.keys, ce.vals = c.compileCell(p, ident)
	for _, v := range ce.vals {
		if v.Action == maps.ActionSourcePort {
			c.tableRefs[v.Rule]++
		}
	}
	byIdent[ident] = ce
	return ce
}

// dropCell forgets the cached entries of (p, ident); with stale, their keys are recorded as
// possibly left in the maps (the identity's entries change under the same number).
func (c *Compiler) dropCell(p, ident uint32, stale bool) {
	ce, ok := c.cells[p][ident]
	if !ok {
		return
	}
	for i, v := range ce.vals {
		if v.Action == maps.ActionSourcePort {
			c.tableRefs[v.Rule]--
		}
		if stale {
			c.stale[ce.keys[i]] = true
		}
	}
	if stale {
		c.dirtyIdents[ident] = true
	}
	delete(c.cells[p], ident)
}

func (cl cell) value() maps.PolicyValue {
	return maps.PolicyValue{Action: cl.action, Rule: cl.rule, Log: cl.log}
}

// compileCell builds the entries of program p for identity ident.
func (c *Compiler) compileCell(p, ident uint32) ([]maps.PolicyKey, []maps.PolicyValue) {
	var rules []*progRule
	for i := range c.progRules[p] {
		r := &c.progRules[p][i]
		if r.match != 0 && !slices.Contains(c.identSet[ident], r.match) {
			continue
		}
		if r.peerPorts != nil {
			// The peer's named ports, as this identity's workloads have them.
			rr := *r
			if set := r.peerPorts.set(r.proto, c.identPorts[ident]); r.peerDst {
				rr.dports = set
			} else {
				rr.sports = set
			}
			r = &rr
		}
		rules = append(rules, r)
	}
	var (
		keys []maps.PolicyKey
		vals []maps.PolicyValue
	)
	emit := func(k maps.PolicyKey, cl cell) {
		keys = append(keys, k)
		vals = append(vals, cl.value())
	}

	// Protocols no rule names (in protocol or notProtocol): the rules for any protocol (they
	// have no ports) decide.
	var anyProto []*progRule
	for _, r := range rules {
		if r.proto == 0 {
			anyProto = append(anyProto, r)
		}
	}
	emit(maps.PolicyKey{Program: p, Identity: ident, AllProtocols: true}, evalAt(anyProto, 0, 0))

	protos := map[uint8]bool{}
	for _, r := range rules {
		if r.proto != 0 {
			protos[r.proto] = true
		}
		if r.notProto != 0 {
			protos[r.notProto] = true
		}
	}
	for _, proto := range slices.Sorted(func(yield func(uint8) bool) {
		for x := range protos {
			if !yield(x) {
				return
			}
		}
	}) {
		var pr []*progRule
		for _, r := range rules {
			if r.takes(proto) {
				pr = append(pr, r)
			}
		}
		segs := c.portFunction(pr)
		// The most common result becomes the protocol's entry; the rest are port prefixes.
		cover := map[cell]uint32{}
		for _, s := range segs {
			cover[s.c] += uint32(s.hi) - uint32(s.lo) + 1
		}
		def := segs[0].c
		for _, s := range segs {
			if cover[s.c] > cover[def] {
				def = s.c
			}
		}
		emit(maps.PolicyKey{Program: p, Identity: ident, Protocol: proto}, def)
		for _, s := range segs {
			if s.c == def {
				continue
			}
			for _, blk := range prefixBlocks(s.lo, s.hi) {
				emit(maps.PolicyKey{Program: p, Identity: ident, Protocol: proto, Port: blk.port, PortBits: blk.bits}, s.c)
			}
		}
	}
	return keys, vals
}

// evalAt walks rules (all taking the protocol) for destination port d and source port s: the
// first Allow or Deny, or end, that matches decides; Log rules before it are remembered; Pass
// skips the rest of its group.
func evalAt(rules []*progRule, d, s uint16) cell {
	var log uint32
	for i := 0; i < len(rules); i++ {
		r := rules[i]
		if !r.dports.contains(d) || !r.sports.contains(s) {
			continue
		}
		act := r.action
		if r.end != endNone {
			switch r.end {
			case endPass:
				continue
			case endAllow:
				act = actAllow
			default:
				act = actDeny
			}
		}
		switch act {
		case actLog:
			if log == 0 {
				log = r.id
			}
		case actPass:
			for i+1 < len(rules) && rules[i+1].group == r.group {
				i++
			}
		case actAllow:
			return cell{action: maps.ActionAllow, rule: r.id, log: log}
		default:
			return cell{action: maps.ActionDeny, rule: r.id, log: log}
		}
	}
	return cell{action: maps.ActionDeny, log: log}
}

type segment struct {
	lo, hi uint16
	c      cell
}

// boundaries cuts 0..65535 at every edge of the given sets: within each piece, every set either
// holds all ports or none.
func boundaries(sets []intervals) []interval {
	cuts := map[uint32]bool{0: true}
	for _, s := range sets {
		for _, iv := range s {
			cuts[uint32(iv.lo)] = true
			cuts[uint32(iv.hi)+1] = true
		}
	}
	starts := make([]uint32, 0, len(cuts))
	for x := range cuts {
		if x <= 0xffff {
			starts = append(starts, x)
		}
	}
	sort.Slice(starts, func(i, j int) bool { return starts[i] < starts[j] })
	out := make([]interval, len(starts))
	for i, s := range starts {
		end := uint32(0xffff)
		if i+1 < len(starts) {
			end = starts[i+1] - 1
		}
		out[i] = interval{uint16(s), uint16(end)}
	}
	return out
}

// portFunction is the walk's result over destination ports, merged into segments; where it
// also depends on the source port, a segment names a source-port table.
func (c *Compiler) portFunction(rules []*progRule) []segment {
	sets := make([]intervals, len(rules))
	for i, r := range rules {
		sets[i] = r.dports
	}
	var segs []segment
	for _, piece := range boundaries(sets) {
		var (
			active []*progRule // the rules that take this piece's destination ports
			ssets  []intervals
		)
		for _, r := range rules {
			if !r.dports.contains(piece.lo) {
				continue
			}
			active = append(active, r)
			if !r.sports.isAll() {
				ssets = append(ssets, r.sports)
			}
		}
		var cl cell
		if len(ssets) == 0 {
			cl = evalAt(active, piece.lo, 0)
		} else {
			cl = c.sourcePortTable(active, piece.lo, ssets)
		}
		if n := len(segs); n > 0 && segs[n-1].c == cl {
			segs[n-1].hi = piece.hi
			continue
		}
		segs = append(segs, segment{piece.lo, piece.hi, cl})
	}
	return segs
}

// sourcePortTable is the walk's result at destination port d over source ports: one cell when
// it is the same for all, else the number of a table of it.
func (c *Compiler) sourcePortTable(rules []*progRule, d uint16, sets []intervals) cell {
	var entries []tableEntry
	for _, piece := range boundaries(sets) {
		cl := evalAt(rules, d, piece.lo)
		if n := len(entries); n > 0 && entries[n-1].c == cl {
			entries[n-1].hi = piece.hi
			continue
		}
		entries = append(entries, tableEntry{piece.lo, piece.hi, cl})
	}
	if len(entries) == 1 {
		return entries[0].c
	}
	var b strings.Builder
	for _, e := range entries {
		fmt.Fprintf(&b, "%d-%d:%d/%d/%d;", e.lo, e.hi, e.c.action, e.c.rule, e.c.log)
	}
	content := b.String()
	id, ok := c.tableOf[content]
	if !ok {
		id = number("table "+content, c.tables, 0x7fffffff, maps.SourcePortTable)
		c.tables[id] = content
		c.tableOf[content] = id
		c.tableAt[id] = entries
	}
	return cell{action: maps.ActionSourcePort, rule: id}
}

type block struct {
	port uint16
	bits uint8
}

// prefixBlocks splits lo..hi into the fewest aligned power-of-two blocks.
func prefixBlocks(lo, hi uint16) []block {
	var out []block
	for x := uint32(lo); x <= uint32(hi); {
		size := uint32(1)
		bits := uint8(16)
		for bits > 0 && x%(size*2) == 0 && x+size*2-1 <= uint32(hi) {
			size *= 2
			bits--
		}
		out = append(out, block{uint16(x), bits})
		x += size
	}
	return out
}

// Retain forgets programs, identities and rules no longer in use, once a Result is applied and
// nothing older is in the maps. Rule ids of forgotten rules are handed out again later. Its cost
// is in the programs and identities it is given, and in what it forgets.
func (c *Compiler) Retain(programs, identities map[uint32]bool) {
	var deadPrograms, deadIdents []uint32
	for p := range c.programs {
		if !programs[p] {
			deadPrograms = append(deadPrograms, p)
		}
	}
	for id := range c.identities {
		if !identities[id] {
			deadIdents = append(deadIdents, id)
		}
	}
	for _, id := range deadIdents {
		delete(c.identityOf, c.identities[id])
		delete(c.identities, id)
		delete(c.identSet, id)
		delete(c.identPorts, id)
		for p := range c.cells {
			c.dropCell(p, id, false)
		}
	}
	for p := range c.cells {
		if !programs[p] {
			for id := range c.cells[p] {
				c.dropCell(p, id, false)
			}
			delete(c.cells, p)
		}
	}
	for t, n := range c.tableRefs {
		if n <= 0 {
			delete(c.tableRefs, t)
			delete(c.tableOf, c.tables[t])
			delete(c.tables, t)
			delete(c.tableAt, t)
		}
	}
	if len(deadPrograms) == 0 {
		return
	}
	for _, p := range deadPrograms {
		for _, pr := range c.progRules[p] {
			if pr.peerPorts != nil {
				for _, n := range slices.Concat(pr.peerPorts.names, pr.peerPorts.notNames) {
					if c.portNames[n]--; c.portNames[n] <= 0 {
						delete(c.portNames, n)
					}
				}
			}
		}
		delete(c.programOf, c.programs[p])
		delete(c.programs, p)
		delete(c.progRules, p)
	}
	liveRules, liveMatches := map[uint32]bool{}, map[uint32]bool{}
	for _, prs := range c.progRules {
		for _, r := range prs {
			liveRules[r.id] = true
			liveMatches[r.match] = true
		}
	}
	// Matches live on only through programs: identities that still name dead ones are replaced
	// by the next compilation, which no longer records them.
	for k, id := range c.matches {
		if !liveMatches[id] {
			delete(c.matches, k)
			delete(c.matchByID, id)
			c.deadMatches[id] = true
		}
	}
	freed := false
	for text, id := range c.ruleOf {
		if !liveRules[id] {
			delete(c.ruleOf, text)
			delete(c.ruleRefs, id)
			c.freeIDs = append(c.freeIDs, id)
			freed = true
		}
	}
	if freed {
		c.rulesGen++
		slices.Sort(c.freeIDs)
		slices.Reverse(c.freeIDs) // hand out low ids first
	}
}
