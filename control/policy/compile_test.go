package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/policy/selector"
	"github.com/margaynet/margay/maps"
)

// dataplane does in Go what bpf/include/policy.h does with the maps a Result and its entries
// describe: the oracle for the compiler.
type dataplane struct {
	ips     map[netip.Prefix]uint32
	entries map[maps.PolicyKey]maps.PolicyValue
	local   map[netip.Addr]Programs
	hosts   map[netip.Addr]bool
	self    netip.Addr
	fs      map[maps.FailsafeKey]maps.FailsafeDirection
}

func (d *dataplane) identity(a netip.Addr) uint32 {
	best, id := -1, uint32(0)
	for p, v := range d.ips {
		if p.Contains(a) && p.Bits() > best {
			best, id = p.Bits(), v
		}
	}
	return id
}

func (d *dataplane) lookup(program, identity uint32, proto uint8, port uint16) (maps.PolicyValue, bool) {
	for bits := 16; bits >= 0; bits-- {
		k := maps.PolicyKey{Program: program, Identity: identity, Protocol: proto, PortBits: uint8(bits)}
		if bits > 0 {
			k.Port = port &^ (0xffff >> bits)
		}
		if v, ok := d.entries[k]; ok {
			return v, true
		}
	}
	v, ok := d.entries[maps.PolicyKey{Program: program, Identity: identity, AllProtocols: true}]
	return v, ok
}

func (d *dataplane) decide(program uint32, peer netip.Addr, f Flow) (maps.PolicyAction, uint32) {
	v := d.value(program, peer, f)
	return v.Action, v.Rule
}

// value is the entry the programs end with for a flow: a deny without a rule when none.
func (d *dataplane) value(program uint32, peer netip.Addr, f Flow) maps.PolicyValue {
	v, ok := d.lookup(program, d.identity(peer), f.Proto, f.DstPort)
	if ok && v.Action == maps.ActionSourcePort {
		v, ok = d.lookup(v.Rule, 0, 0, f.SrcPort)
	}
	if !ok {
		return maps.PolicyValue{Action: maps.ActionDeny}
	}
	return v
}

func (d *dataplane) failsafe(host netip.Addr, f Flow, dir maps.FailsafeDirection) bool {
	if !d.hosts[host] || (f.Proto != 6 && f.Proto != 17 && f.Proto != 132 && f.Proto != 136) {
		return false
	}
	return d.fs[maps.FailsafeKey{Protocol: f.Proto, Port: f.DstPort}]&dir != 0
}

func (d *dataplane) allowed(f Flow) (bool, Direction) {
	if pg, ok := d.local[f.Src]; ok && pg.Egress != 0 && !d.failsafe(f.Dst, f, maps.FailsafeInbound) {
		if a, _ := d.decide(pg.Egress, f.Dst, f); a != maps.ActionAllow {
			return false, Egress
		}
	}
	if pg, ok := d.local[f.Dst]; ok && pg.Ingress != 0 && f.Src != d.self && !d.failsafe(f.Src, f, maps.FailsafeOutbound) {
		if a, _ := d.decide(pg.Ingress, f.Src, f); a != maps.ActionAllow {
			return false, Ingress
		}
	}
	return true, 0
}

// gen makes random worlds and policies over a small vocabulary, so that rules overlap often.
type gen struct{ r *rand.Rand }

var (
	labelKeys   = []string{"app", "role", "tier"}
	labelValues = []string{"web", "db", "fe", "be", "1"}
	// valueParts are parts of labelValues (and of none), for contains, starts with and ends with.
	valueParts = []string{"", "e", "w", "b", "d", "we", "eb", "1", "x"}
	namespaces = []string{"prod", "dev"}
	netsPool   = []string{"198.19.0.0/16", "198.19.0.0/24", "198.19.0.0/25", "198.19.0.128/25", "198.19.1.0/24",
		"198.19.0.5/32", "198.18.0.0/24", "198.18.0.2/32", "0.0.0.0/0", "10.0.0.0/8"}
)

func (g gen) pick(xs []string) string { return xs[g.r.IntN(len(xs))] }

func (g gen) selector() string {
	k, v := g.pick(labelKeys), g.pick(labelValues)
	switch g.r.IntN(16) {
	case 9:
		return fmt.Sprintf("%s contains %q", k, g.pick(valueParts))
	case 10:
		return fmt.Sprintf("%s starts with %q", k, g.pick(valueParts))
	case 11:
		return fmt.Sprintf("%s endswith '%s' || %s", k, g.pick(valueParts), g.selectorSimple())
	case 12:
		return []string{"global()", "!global()", "global() || has(app)"}[g.r.IntN(3)]
	case 13:
		return fmt.Sprintf("%s == %q && !(%s)", selector.NamespaceLabel, g.pick(namespaces), g.selectorSimple())
	case 14:
		return fmt.Sprintf("(%s ends with %q || %s) && !%s starts with %q", k, g.pick(valueParts),
			g.selectorSimple(), g.pick(labelKeys), g.pick(valueParts))
	case 15:
		return fmt.Sprintf("%s notin {%q,} && %s", k, v, g.selectorSimple())
	}
	switch g.r.IntN(9) {
	case 0:
		return ""
	case 1:
		return "all()"
	case 2:
		return fmt.Sprintf("has(%s)", k)
	case 3:
		return fmt.Sprintf("!has(%s)", k)
	case 4:
		return fmt.Sprintf("%s != %q", k, v)
	case 5:
		return fmt.Sprintf("%s in {%q, %q}", k, v, g.pick(labelValues))
	case 6:
		return fmt.Sprintf("%s not in {%q}", k, v)
	case 7:
		return fmt.Sprintf("%s == %q || %s", k, v, g.selectorSimple())
	}
	return fmt.Sprintf("%s == %q && %s", k, v, g.selectorSimple())
}

func (g gen) selectorSimple() string {
	return fmt.Sprintf("%s == %q", g.pick(labelKeys), g.pick(labelValues))
}

func (g gen) ports() []datastore.PortRange {
	var out []datastore.PortRange
	for range g.r.IntN(3) {
		lo := uint16(g.r.IntN(12) * 10)
		if g.r.IntN(4) == 0 {
			lo = uint16(g.r.IntN(65536))
		}
		hi := lo
		if g.r.IntN(2) == 0 {
			hi = lo + uint16(g.r.IntN(40))
			if hi < lo {
				hi = 0xffff
			}
		}
		if g.r.IntN(4) == 0 {
			out = append(out, datastore.PortRange{Name: g.pick(portNames)})
			continue
		}
		out = append(out, datastore.PortRange{Lo: lo, Hi: hi})
	}
	return out
}

// portNames are the names rules give ports; workloads have some of them (endpointPorts).
var portNames = []string{"http", "dns", "metrics"}

// endpointPorts are named ports workloads may have: a name can be a port of another number, or
// of another protocol, on another workload, and "metrics" is on none.
var endpointPorts = []datastore.EndpointPort{
	{Name: "http", Protocol: 6, Port: 80}, {Name: "http", Protocol: 6, Port: 8080}, {Name: "dns", Protocol: 17, Port: 53},
	{Name: "dns", Protocol: 6, Port: 53}, {Name: "http", Protocol: 17, Port: 110},
}

// RandomWorkloadExtras gives a workload what rules beyond labels look at: named ports, a service
// account, profiles, its namespace's labels.
func randomExtras(r *rand.Rand, ep *Endpoint) {
	for _, p := range endpointPorts {
		if r.IntN(3) == 0 && !slices.ContainsFunc(ep.Ports, func(q datastore.EndpointPort) bool {
			return q.Name == p.Name && q.Protocol == p.Protocol
		}) {
			ep.Ports = append(ep.Ports, p)
		}
	}
	if r.IntN(2) == 0 {
		sa := []string{"sa1", "sa2"}[r.IntN(2)]
		ep.Labels[ServiceAccountLabel] = sa
		ep.Labels[ServiceAccountPrefix+NameLabel] = sa
		if r.IntN(2) == 0 {
			ep.Labels[ServiceAccountPrefix+"role"] = g0.pick(labelValues)
		}
	}
	if ns, ok := ep.Labels[NamespaceLabel]; ok {
		ep.Labels[NamespacePrefix+NameLabel] = ns
		ep.Labels[NamespacePrefix+"team"] = map[string]string{"prod": "a", "dev": "b"}[ns]
	}
	switch r.IntN(4) {
	case 0:
		ep.Profiles = []string{"pa"}
		ep.Labels["tier"] = "web" // pa's labelsToApply, under its own
	case 1:
		ep.Profiles = []string{"pb", "pz"} // pz does not exist
	}
}

var g0 = gen{rand.New(rand.NewPCG(0, 0))}

func (g gen) nets() []netip.Prefix {
	var out []netip.Prefix
	for range g.r.IntN(2) {
		out = append(out, netip.MustParsePrefix(g.pick(netsPool)))
	}
	return out
}

func (g gen) entity(ports bool) datastore.EntityRule {
	var e datastore.EntityRule
	if g.r.IntN(3) == 0 {
		e.Nets = g.nets()
	}
	if g.r.IntN(5) == 0 {
		e.NotNets = g.nets()
	}
	if g.r.IntN(3) == 0 {
		e.Selector = g.selector()
	}
	if g.r.IntN(6) == 0 {
		e.NotSelector = g.selector()
	}
	if g.r.IntN(6) == 0 {
		e.NamespaceSelector = []string{"all()", `team == "a"`, `projectcalico.org/name == "dev"`, "has(team)", "global()"}[g.r.IntN(5)]
	}
	if g.r.IntN(7) == 0 {
		e.ServiceAccounts = &datastore.ServiceAccountMatch{}
		if g.r.IntN(2) == 0 {
			e.ServiceAccounts.Names = []string{"sa1"}
		}
		if g.r.IntN(2) == 0 || len(e.ServiceAccounts.Names) == 0 {
			e.ServiceAccounts.Selector = fmt.Sprintf("role == %q", g.pick(labelValues))
		}
	}
	if ports && g.r.IntN(2) == 0 {
		e.Ports = g.ports()
	}
	if ports && g.r.IntN(5) == 0 {
		e.NotPorts = g.ports()
	}
	return e
}

func (g gen) rule() datastore.Rule { return g.ruleWith(true) }

// ruleWith makes a random rule; pass says whether Pass may be its action (not in profiles).
func (g gen) ruleWith(pass bool) datastore.Rule {
	r := datastore.Rule{Action: datastore.ActionAllow}
	switch g.r.IntN(10) {
	case 0, 1:
		r.Action = datastore.ActionDeny
	case 2:
		r.Action = datastore.ActionLog
	case 3:
		if pass {
			r.Action = datastore.ActionPass
		}
	}
	var protoPorts bool
	icmp := func() *datastore.ICMPMatch {
		t := uint8(8)
		m := &datastore.ICMPMatch{Type: &t}
		if g.r.IntN(2) == 0 {
			c := uint8(0)
			m.Code = &c
		}
		return m
	}
	switch g.r.IntN(6) {
	case 0, 1:
		p := datastore.Protocol(6)
		r.Protocol, protoPorts = &p, true
	case 2:
		p := datastore.Protocol(17)
		r.Protocol, protoPorts = &p, true
	case 3:
		p := datastore.Protocol(1)
		r.Protocol = &p
		switch g.r.IntN(3) {
		case 0:
			r.ICMP = icmp()
		case 1:
			r.NotICMP = icmp()
		}
	case 4: // every protocol but one
		np := datastore.Protocol([]uint8{1, 6, 17}[g.r.IntN(3)])
		r.NotProtocol = &np
	}
	r.Source = g.entity(protoPorts && g.r.IntN(3) == 0)
	r.Destination = g.entity(protoPorts)
	return r
}

func (g gen) policies() []datastore.Policy {
	var out []datastore.Policy
	for i := range 1 + g.r.IntN(5) {
		p := datastore.Policy{Version: 1, Name: fmt.Sprintf("p%d", i), Selector: g.selector()}
		p.Tier = []string{"", "", "sec", "plat"}[g.r.IntN(4)]
		switch g.r.IntN(6) {
		case 0:
			p.Namespace = g.pick(namespaces)
		case 1:
			p.NamespaceSelector = []string{`team == "b"`, "all()", "global()"}[g.r.IntN(3)]
		case 2:
			p.ServiceAccountSelector = fmt.Sprintf("role == %q", g.pick(labelValues))
		}
		if g.r.IntN(3) > 0 {
			o := float64(g.r.IntN(4) * 100)
			p.Order = &o
		}
		for range g.r.IntN(5) {
			p.Ingress = append(p.Ingress, g.rule())
		}
		for range g.r.IntN(4) {
			p.Egress = append(p.Egress, g.rule())
		}
		switch g.r.IntN(4) {
		case 0:
			p.Types = []datastore.PolicyType{datastore.PolicyIngress, datastore.PolicyEgress}
		case 1:
			if len(p.Ingress) == 0 {
				p.Types = []datastore.PolicyType{datastore.PolicyEgress}
			}
		}
		if len(p.Types) > 0 && len(p.Ingress) > 0 && !p.AppliesTo(datastore.PolicyIngress) {
			p.Types = append(p.Types, datastore.PolicyIngress)
		}
		if len(p.Types) > 0 && len(p.Egress) > 0 && !p.AppliesTo(datastore.PolicyEgress) {
			p.Types = append(p.Types, datastore.PolicyEgress)
		}
		out = append(out, decodeRoundTrip(p))
	}
	return out
}

// tiers are the tier records of the random inputs: "sec" passes by default, "plat" has no
// record (it sorts last and denies).
func (g gen) tiers() []datastore.Tier {
	o := float64(g.r.IntN(3) * 600000)
	action := []string{datastore.TierPass, datastore.TierDeny}[g.r.IntN(2)]
	return []datastore.Tier{{Version: 1, Name: "sec", Order: &o, DefaultAction: action}}
}

// profiles are the profiles of the random inputs: "pa" applies tier=web.
func (g gen) profiles() []datastore.Profile {
	var out []datastore.Profile
	for _, name := range []string{"pa", "pb"} {
		pr := datastore.Profile{Version: 1, Name: name}
		if name == "pa" {
			pr.LabelsToApply = map[string]string{"tier": "web"}
		}
		for range g.r.IntN(3) {
			pr.Ingress = append(pr.Ingress, g.ruleWith(false))
		}
		for range g.r.IntN(3) {
			pr.Egress = append(pr.Egress, g.ruleWith(false))
		}
		out = append(out, pr)
	}
	return out
}

// input is a random policy set with its tiers and profiles.
func (g gen) input() Input {
	return Input{Policies: g.policies(), Tiers: g.tiers(), Profiles: g.profiles()}
}

// decodeRoundTrip applies defaults the way the datastore does.
func decodeRoundTrip(p datastore.Policy) datastore.Policy {
	if len(p.Types) == 0 {
		p.Types = []datastore.PolicyType{datastore.PolicyIngress}
		if len(p.Egress) > 0 {
			p.Types = append(p.Types, datastore.PolicyEgress)
		}
	}
	return p
}

type world struct {
	all   []Endpoint
	local []Endpoint
	w     *World
	self  netip.Addr
	addrs []netip.Addr
}

func (g gen) world() world {
	wd := world{w: &World{Endpoints: map[netip.Addr]*Endpoint{}, Hosts: map[netip.Addr]string{},
		Failsafe: map[maps.FailsafeKey]maps.FailsafeDirection{{Protocol: 6, Port: 22}: maps.FailsafeInbound,
			{Protocol: 17, Port: 53}: maps.FailsafeOutbound}}}
	wd.self = netip.MustParseAddr("198.18.0.1")
	for i, h := range []string{"198.18.0.1", "198.18.0.2", "198.18.0.3"} {
		a := netip.MustParseAddr(h)
		wd.w.Hosts[a] = fmt.Sprintf("host%d", i+1)
		wd.addrs = append(wd.addrs, a)
	}
	for i := range 10 {
		a := netip.AddrFrom4([4]byte{198, 19, byte(i % 2), byte(1 + i*3)})
		if i == 4 {
			a = netip.MustParseAddr("198.19.0.5")
		}
		ep := Endpoint{Key: fmt.Sprintf("host%d/w%d", 1+i%3, i), Node: fmt.Sprintf("host%d", 1+i%3), Addr: a,
			Labels: map[string]string{}}
		for _, k := range labelKeys {
			if g.r.IntN(2) == 0 {
				ep.Labels[k] = g.pick(labelValues)
			}
		}
		// Most workloads are in a namespace; global() tells the others apart.
		if g.r.IntN(4) != 0 {
			ep.Labels[selector.NamespaceLabel] = g.pick(namespaces)
		}
		randomExtras(g.r, &ep)
		wd.all = append(wd.all, ep)
		if ep.Node == "host1" {
			wd.local = append(wd.local, ep)
		}
		wd.addrs = append(wd.addrs, a)
	}
	for i := range wd.all {
		wd.w.Endpoints[wd.all[i].Addr] = &wd.all[i]
	}
	wd.addrs = append(wd.addrs, netip.MustParseAddr("198.19.0.200"), netip.MustParseAddr("10.1.2.3"),
		netip.MustParseAddr("198.19.1.77"), netip.MustParseAddr("8.8.8.8"))
	return wd
}

func (g gen) flow(wd world) Flow {
	f := Flow{Src: wd.addrs[g.r.IntN(len(wd.addrs))], Dst: wd.addrs[g.r.IntN(len(wd.addrs))]}
	ports := []uint16{0, 1, 10, 19, 20, 22, 30, 53, 80, 100, 110, 119, 120, 8080, 65535, uint16(g.r.IntN(65536))}
	switch g.r.IntN(5) {
	case 0, 1:
		f.Proto = 6
	case 2:
		f.Proto = 17
	case 3:
		f.Proto = 1
		f.DstPort = []uint16{8 << 8, 0, 3<<8 | 4, 8<<8 | 1}[g.r.IntN(4)]
		return f
	default:
		f.Proto = 47
		return f
	}
	f.SrcPort, f.DstPort = ports[g.r.IntN(len(ports))], ports[g.r.IntN(len(ports))]
	return f
}

func compileWorld(t *testing.T, c *Compiler, s *Set, wd world) *dataplane {
	t.Helper()
	res, err := c.Compile(s, wd.all, wd.local)
	if err != nil {
		t.Fatal(err)
	}
	d := &dataplane{ips: res.IPs, entries: c.Entries(res.Programs, res.Identities), local: res.Endpoints,
		hosts: map[netip.Addr]bool{}, self: wd.self, fs: wd.w.Failsafe}
	for h := range wd.w.Hosts {
		d.hosts[h] = true
	}
	return d
}

// TestCompileMatchesReference holds the compiled maps against the reference walk of the rules on
// thousands of random policy sets and flows.
func TestCompileMatchesReference(t *testing.T) {
	rounds := 400
	if testing.Short() {
		rounds = 50
	}
	for seed := range uint64(rounds) {
		g := gen{rand.New(rand.NewPCG(seed, 7))}
		wd := g.world()
		in := g.input()
		s, err := Build(in)
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		c := NewCompiler(65536)
		d := compileWorld(t, c, s, wd)
		rules := c.Rules()
		for range 300 {
			f := g.flow(wd)
			want, wdir := s.AllowedOn(wd.w, "host1", f)
			got, gdir := d.allowed(f)
			if got != want || (!got && gdir != wdir) {
				t.Fatalf("seed %d: %v: compiled says %v (%v), reference %v (%v)\ninput: %+v",
					seed, f, got, gdir, want, wdir, in)
			}
			// Each direction on its own: the action, the rule that decided and the Log rule.
			for _, x := range []struct {
				ep   *Endpoint
				dir  Direction
				peer netip.Addr
			}{{wd.w.Endpoints[f.Src], Egress, f.Dst}, {wd.w.Endpoints[f.Dst], Ingress, f.Src}} {
				if x.ep == nil || x.ep.Node != "host1" {
					continue
				}
				pg := d.local[x.ep.Addr]
				prog := pg.Ingress
				if x.dir == Egress {
					prog = pg.Egress
				}
				ref := s.Decide(x.ep, x.dir, x.peer, wd.w.Endpoints[x.peer], f)
				if prog == 0 {
					if ref.Selected || !ref.Allow {
						t.Fatalf("seed %d: %v %s of %s: no program, but the reference has %+v", seed, f, x.dir, x.ep.Key, ref)
					}
					continue
				}
				v := d.value(prog, x.peer, f)
				name := func(id uint32) string {
					if id == 0 {
						return "-"
					}
					return rules[id].String()
				}
				refName := func(r *RuleRef) string {
					if r == nil {
						return "-"
					}
					return r.String()
				}
				if (v.Action == maps.ActionAllow) != ref.Allow || name(v.Rule) != refName(ref.Rule) || name(v.Log) != refName(ref.Log) {
					t.Fatalf("seed %d: %v %s of %s: compiled %v rule %s log %s, reference allow %v rule %s log %s\ninput: %+v",
						seed, f, x.dir, x.ep.Key, v.Action, name(v.Rule), name(v.Log), ref.Allow, refName(ref.Rule), refName(ref.Log), in)
				}
			}
		}
	}
}

// TestRecompileKeepsNumbers: the same input numbers programs and identities the same way, also
// in a fresh compiler (an agent that restarted), so that nothing is rewritten.
func TestRecompileKeepsNumbers(t *testing.T) {
	g := gen{rand.New(rand.NewPCG(1, 2))}
	wd := g.world()
	s, err := NewSet(g.policies())
	if err != nil {
		t.Fatal(err)
	}
	a, b := NewCompiler(65536), NewCompiler(65536)
	ra, _ := a.Compile(s, wd.all, wd.local)
	rb, _ := b.Compile(s, wd.all, wd.local)
	if fmt.Sprint(ra.IPs) != fmt.Sprint(rb.IPs) || fmt.Sprint(ra.Endpoints) != fmt.Sprint(rb.Endpoints) {
		t.Fatalf("numbers differ:\n%v %v\n%v %v", ra.IPs, ra.Endpoints, rb.IPs, rb.Endpoints)
	}
}

// TestTransition: while a new result is applied, old programs meet new identities and new
// programs old ones; Entries over the union answers every combination as its own policy set does.
func TestTransition(t *testing.T) {
	for seed := range uint64(60) {
		g := gen{rand.New(rand.NewPCG(seed, 99))}
		wd := g.world()
		s1, err1 := NewSet(g.policies())
		s2, err2 := NewSet(g.policies())
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		c := NewCompiler(65536)
		r1, _ := c.Compile(s1, wd.all, wd.local)
		// Labels change between the two: identities move.
		wd2 := wd
		wd2.all = slices.Clone(wd.all)
		wd2.all[1].Labels = map[string]string{"app": "web", "role": "fe"} // on host2
		wd2.local = nil
		for _, ep := range wd2.all {
			if ep.Node == "host1" {
				wd2.local = append(wd2.local, ep)
			}
		}
		r2, _ := c.Compile(s2, wd2.all, wd2.local)
		union := func(a, b map[uint32]bool) map[uint32]bool {
			out := map[uint32]bool{}
			for k := range a {
				out[k] = true
			}
			for k := range b {
				out[k] = true
			}
			return out
		}
		entries := c.Entries(union(r1.Programs, r2.Programs), union(r1.Identities, r2.Identities))
		// Each state, old and new, reads from the union exactly what it says on its own.
		for _, step := range []struct {
			s   *Set
			r   *Result
			ips map[netip.Prefix]uint32
			wd  world
		}{{s1, r1, r1.IPs, wd}, {s2, r2, r2.IPs, wd2}} {
			d := &dataplane{ips: step.ips, entries: entries, local: step.r.Endpoints, hosts: map[netip.Addr]bool{},
				self: wd.self, fs: wd.w.Failsafe}
			for h := range wd.w.Hosts {
				d.hosts[h] = true
			}
			w := *step.wd.w
			w.Endpoints = map[netip.Addr]*Endpoint{}
			for i := range step.wd.all {
				w.Endpoints[step.wd.all[i].Addr] = &step.wd.all[i]
			}
			for range 200 {
				f := g.flow(step.wd)
				want, _ := step.s.AllowedOn(&w, "host1", f)
				if got, _ := d.allowed(f); got != want {
					t.Fatalf("seed %d: %v: union entries say %v, the set %v", seed, f, got, want)
				}
			}
		}
		// The window between moving identities and moving endpoints: old programs, new
		// identities, and a world that already changed.
		d := &dataplane{ips: r2.IPs, entries: entries, local: r1.Endpoints, hosts: map[netip.Addr]bool{},
			self: wd.self, fs: wd.w.Failsafe}
		for h := range wd.w.Hosts {
			d.hosts[h] = true
		}
		w2 := *wd.w
		w2.Endpoints = map[netip.Addr]*Endpoint{}
		for i := range wd2.all {
			w2.Endpoints[wd2.all[i].Addr] = &wd2.all[i]
		}
		for range 200 {
			f := g.flow(wd2)
			want, _ := s1.AllowedOn(&w2, "host1", f)
			if got, _ := d.allowed(f); got != want {
				t.Fatalf("seed %d: window: %v: old programs on new identities say %v, the old set %v", seed, f, got, want)
			}
		}
		c.Retain(r2.Programs, r2.Identities)
		after := c.Entries(r2.Programs, r2.Identities)
		for k, v := range after {
			if entries[k] != v {
				t.Fatalf("seed %d: entry %v changed after Retain: %v, was %v", seed, k, v, entries[k])
			}
		}
	}
}

func TestPrefixBlocks(t *testing.T) {
	for _, tc := range []struct{ lo, hi uint16 }{{0, 0xffff}, {80, 80}, {8000, 8080}, {1, 65534}, {0, 0}, {65535, 65535}, {1024, 2047}} {
		var got []uint16
		for _, b := range prefixBlocks(tc.lo, tc.hi) {
			k := maps.PolicyKey{Port: b.port, PortBits: b.bits}
			lo, hi := k.PortRange()
			for p := uint32(lo); p <= uint32(hi); p++ {
				got = append(got, uint16(p))
			}
		}
		if len(got) != int(tc.hi)-int(tc.lo)+1 || got[0] != tc.lo || got[len(got)-1] != tc.hi {
			t.Fatalf("%d-%d: blocks cover %d ports from %d", tc.lo, tc.hi, len(got), got[0])
		}
		for i := 1; i < len(got); i++ {
			if got[i] != got[i-1]+1 {
				t.Fatalf("%d-%d: gap or overlap at %d", tc.lo, tc.hi, got[i])
			}
		}
	}
	if n := len(prefixBlocks(1, 65534)); n != 30 {
		t.Fatalf("1-65534 takes %d blocks, want 30", n)
	}
}

// TestFlatLookups: however many rules, a decision is at most three lookups deep (identity,
// program, source-port table); the compiled entry count stays linear in the rules.
func TestManyRules(t *testing.T) {
	var rules []datastore.Rule
	for i := range 1000 {
		p := datastore.Protocol(6)
		rules = append(rules, datastore.Rule{Action: datastore.ActionAllow, Protocol: &p,
			Source:      datastore.EntityRule{Nets: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)}},
			Destination: datastore.EntityRule{Ports: []datastore.PortRange{{Lo: uint16(1000 + i), Hi: uint16(1000 + i)}}}})
	}
	s, err := NewSet([]datastore.Policy{{Version: 1, Name: "big", Selector: "all()", Types: []datastore.PolicyType{datastore.PolicyIngress}, Ingress: rules}})
	if err != nil {
		t.Fatal(err)
	}
	c := NewCompiler(65536)
	local := []Endpoint{{Key: "h/w", Node: "h", Addr: netip.MustParseAddr("198.19.0.1"), Labels: map[string]string{}}}
	res, err := c.Compile(s, local, local)
	if err != nil {
		t.Fatal(err)
	}
	entries := c.Entries(res.Programs, res.Identities)
	if len(res.IPs) != 1001 || len(entries) > 1001*3+10 {
		t.Fatalf("1000 CIDR rules: %d prefixes, %d entries", len(res.IPs), len(entries))
	}
	d := &dataplane{ips: res.IPs, entries: entries, local: res.Endpoints}
	for _, i := range []int{0, 1, 500, 999} {
		f := Flow{Src: netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 9}), Dst: local[0].Addr, Proto: 6, SrcPort: 5555, DstPort: uint16(1000 + i)}
		if ok, _ := d.allowed(f); !ok {
			t.Fatalf("rule %d does not allow %v", i, f)
		}
		f.DstPort++
		if ok, _ := d.allowed(f); ok {
			t.Fatalf("%v allowed by no rule", f)
		}
	}
}

// TestRemoveAndReAdd: a policy removed and added again gets its matches under new ids while
// identities keep their numbers; the compiled answers must not read the old ids.
func TestRemoveAndReAdd(t *testing.T) {
	for seed := range uint64(40) {
		g := gen{rand.New(rand.NewPCG(seed, 5))}
		wd := g.world()
		ps := g.policies()
		s, err := NewSet(ps)
		if err != nil {
			t.Fatal(err)
		}
		empty, _ := NewSet(nil)
		c := NewCompiler(65536)
		for _, step := range []*Set{s, empty, s} {
			res, err := c.Compile(step, wd.all, wd.local)
			if err != nil {
				t.Fatal(err)
			}
			c.Retain(res.Programs, res.Identities)
		}
		d := compileWorld(t, c, s, wd)
		for range 200 {
			f := g.flow(wd)
			want, _ := s.AllowedOn(wd.w, "host1", f)
			if got, _ := d.allowed(f); got != want {
				t.Fatalf("seed %d: %v: compiled %v, reference %v", seed, f, got, want)
			}
		}
	}
}
