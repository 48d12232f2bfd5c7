package policy

import (
	"math/rand/v2"
	"testing"

	"github.com/margaynet/margay/control/datastore"
)

// FuzzPolicy feeds arbitrary bytes to the policy decoder. Whatever it accepts must compile, and
// the compiled maps must agree with the reference on random flows; whatever it refuses must say
// why without panicking.
func FuzzPolicy(f *testing.F) {
	for _, s := range []string{
		`{"name":"web","selector":"app == 'web'","ingress":[{"action":"allow","protocol":"tcp","source":{"selector":"role in {'fe'}"},"destination":{"ports":[80,"8000:8080"]}}]}`,
		`{"name":"e","types":["Egress"],"egress":[{"action":"deny","protocol":"icmp","icmp":{"type":8}},{"action":"allow","destination":{"notNets":["198.19.0.0/24"]}}]}`,
		`{"name":"s","order":5,"ingress":[{"action":"allow","protocol":"udp","source":{"ports":["1000:2000"],"notSelector":"has(x)"}}]}`,
		`{"name":"bad","selector":"app ==","ingress":[]}`,
		`{"name":"x","ingress":[{"action":"allow","destination":{"ports":[80]}}]}`,
		`{"name":"y","unknown":1}`,
		`{"name":"c","selector":"app contains 'e' && !global()","ingress":[{"action":"allow","source":{"selector":"role starts with 'f' || tier endswith 'b'"}}]}`,
		`{"name":"g","selector":"global()","egress":[{"action":"deny","destination":{"notSelector":"(has(app) && has(role)) || app notin {'web',}"}}]}`,
		`{"name":"t","namespace":"prod","tier":"sec","ingress":[{"action":"log"},{"action":"pass","source":{"namespaceSelector":"team == 'b'"}},{"action":"allow","protocol":"tcp","destination":{"ports":["http"]}}]}`,
		`{"name":"sa","namespaceSelector":"all()","serviceAccountSelector":"role == 'fe'","egress":[{"action":"allow","protocol":"udp","destination":{"ports":["dns",53],"serviceAccounts":{"names":["sa1"]}}}]}`,
		`{"name":"n","tier":"plat","types":["Ingress","Egress"],"egress":[{"action":"pass","protocol":"tcp","destination":{"notPorts":["http"]}}]}`,
	} {
		f.Add([]byte(s), uint64(1))
	}
	f.Fuzz(func(t *testing.T, data []byte, seed uint64) {
		p, err := datastore.DecodePolicy(data)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		g := gen{rand.New(rand.NewPCG(seed, 3))}
		s, err := Build(Input{Policies: []datastore.Policy{p}, Tiers: g.tiers(), Profiles: g.profiles()})
		if err != nil {
			t.Fatalf("DecodePolicy accepted %s, Build refused it: %v", data, err)
		}
		wd := g.world()
		c := NewCompiler(65536)
		d := compileWorld(t, c, s, wd)
		for range 50 {
			fl := g.flow(wd)
			want, _ := s.AllowedOn(wd.w, "host1", fl)
			if got, _ := d.allowed(fl); got != want {
				t.Fatalf("%s: %v: compiled %v, reference %v", data, fl, got, want)
			}
		}
	})
}
