package policy

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"sort"
	"strings"

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

// progRule is a rule of a program: its own end decided, its peer reduced to a match id.
type progRule struct {
	id       uint32 // rule id
	allow    bool
	proto    uint8
	notProto uint8 // 0: none
	dports   intervals
	sports   intervals
	match    uint32 // 0: any peer
}

// takes says whether the rule applies to protocol proto at all (its ports aside).
func (r *progRule) takes(proto uint8) bool {
	return (r.proto == 0 || r.proto == proto) && r.notProto != proto
}

type cell struct {
	action maps.PolicyAction
	rule   uint32
}

// Compiler keeps the numbering of identities, programs, tables and rules across compilations.
// It is not safe for concurrent use.
type Compiler struct {
	matches   map[string]uint32 // match key -> id
	matchByID map[uint32]match
	nextMatch uint32

	identities map[uint32]string   // id -> content
	identityOf map[string]uint32   // content -> id
	identSet   map[uint32][]uint32 // id -> sorted match ids

	programs  map[uint32]string
	programOf map[string]uint32
	progRules map[uint32][]progRule

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

// program compiles the rules for a local workload into a program id; 0 when none select it.
func (c *Compiler) program(s *Set, ep *Endpoint, dir Direction) (uint32, error) {
	rules, selected := s.rulesFor(ep, dir)
	if !selected {
		return 0, nil
	}
	var (
		prs  []progRule
		text strings.Builder
	)
	for _, r := range rules {
		if !r.local.matches(ep.Addr, ep) {
			continue // its condition on the workload's own end never holds
		}
		id, err := c.ruleID(r)
		if err != nil {
			return 0, err
		}
		pr := progRule{id: id, allow: r.allow, proto: r.proto, notProto: r.notProto, dports: r.dports, sports: r.sports,
			match: c.matchID(r.peer)}
		prs = append(prs, pr)
		fmt.Fprintf(&text, "%s|", r.text)
	}
	content := text.String()
	if id, ok := c.programOf[content]; ok {
		return id, nil
	}
	id := number("program "+content, c.programs, 0x7fffffff, 0)
	c.programs[id] = content
	c.programOf[content] = id
	c.progRules[id] = prs
	return id, nil
}

func (c *Compiler) identity(set []uint32) uint32 {
	var b strings.Builder
	for _, m := range set {
		fmt.Fprintf(&b, "%s;", c.matchKey(m))
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
		ident := c.identity(set)
		res.IPs[p] = ident
		res.Identities[ident] = true
	}
	if labels {
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
			ident := c.identity(set)
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
				out[maps.PolicyKey{Program: t, Port: blk.port, PortBits: blk.bits}] =
					maps.PolicyValue{Action: e.c.action, Rule: e.c.rule}
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

var defaultDeny = cell{action: maps.ActionDeny}

func ruleCell(r *progRule) cell {
	if r.allow {
		return cell{action: maps.ActionAllow, rule: r.id}
	}
	return cell{action: maps.ActionDeny, rule: r.id}
}

// compileCell builds the entries of program p for identity ident.
func (c *Compiler) compileCell(p, ident uint32) ([]maps.PolicyKey, []maps.PolicyValue) {
	var rules []*progRule
	for i := range c.progRules[p] {
		r := &c.progRules[p][i]
		if r.match == 0 || slices.Contains(c.identSet[ident], r.match) {
			rules = append(rules, r)
		}
	}
	var (
		keys []maps.PolicyKey
		vals []maps.PolicyValue
	)
	emit := func(k maps.PolicyKey, cl cell) {
		keys = append(keys, k)
		vals = append(vals, maps.PolicyValue{Action: cl.action, Rule: cl.rule})
	}

	// Protocols no rule names (in protocol or notProtocol): the first rule for any protocol (it
	// has no ports) decides; a rule for all but one protocol takes them too.
	other := defaultDeny
	for _, r := range rules {
		if r.proto == 0 && r.dports.isAll() && r.sports.isAll() {
			other = ruleCell(r)
			break
		}
	}
	emit(maps.PolicyKey{Program: p, Identity: ident, AllProtocols: true}, other)

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

// portFunction is the first-match result of rules over destination ports, merged into segments.
func (c *Compiler) portFunction(rules []*progRule) []segment {
	sets := make([]intervals, len(rules))
	for i, r := range rules {
		sets[i] = r.dports
	}
	var segs []segment
	for _, piece := range boundaries(sets) {
		var (
			pending []*progRule // rules that match only some source ports, before the decider
			decided = defaultDeny
		)
		for _, r := range rules {
			if !r.dports.contains(piece.lo) {
				continue
			}
			if r.sports.isAll() {
				decided = ruleCell(r)
				break
			}
			pending = append(pending, r)
		}
		cl := decided
		if len(pending) > 0 {
			cl = c.sourcePortTable(pending, decided)
		}
		if n := len(segs); n > 0 && segs[n-1].c == cl {
			segs[n-1].hi = piece.hi
			continue
		}
		segs = append(segs, segment{piece.lo, piece.hi, cl})
	}
	return segs
}

// sourcePortTable numbers the first-match function of rules over source ports, with fallback
// where none matches.
func (c *Compiler) sourcePortTable(rules []*progRule, fallback cell) cell {
	sets := make([]intervals, len(rules))
	for i, r := range rules {
		sets[i] = r.sports
	}
	var entries []tableEntry
	for _, piece := range boundaries(sets) {
		cl := fallback
		for _, r := range rules {
			if r.sports.contains(piece.lo) {
				cl = ruleCell(r)
				break
			}
		}
		if n := len(entries); n > 0 && entries[n-1].c == cl {
			entries[n-1].hi = piece.hi
			continue
		}
		entries = append(entries, tableEntry{piece.lo, piece.hi, cl})
	}
	var b strings.Builder
	for _, e := range entries {
		fmt.Fprintf(&b, "%d-%d:%d/%d;", e.lo, e.hi, e.c.action, e.c.rule)
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
