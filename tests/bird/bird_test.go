package bird_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/margaynet/margay/tests/bird"
	"github.com/margaynet/margay/tests/netns"
	"github.com/margaynet/margay/tests/poll"
)

// Two BIRDs in two namespaces peer over iBGP; one originates a route, the other learns it with
// the right next hop. This proves the harness the interop tests stand on.
func TestTwoBirds(t *testing.T) {
	a, b := netns.New(t, "mgybda-"), netns.New(t, "mgybdb-")
	netns.Veth(t, a, "ens32", b, "ens32")
	a.AddAddr(t, "ens32", "198.18.0.1/24")
	b.AddAddr(t, "ens32", "198.18.0.2/24")
	conf := func(id, peer string, originate bool) string {
		static := ""
		if originate {
			static = "protocol static { ipv4; route 198.19.7.0/24 blackhole; }\n"
		}
		return fmt.Sprintf(`router id %s;
protocol device {}
%sprotocol bgp peer {
	local %s as 64512;
	neighbor %s as 64512;
	connect retry time 1;
	direct;
	ipv4 { import all; export all; next hop self; };
}
`, id, static, id, peer)
	}
	ra := bird.Start(t, a, conf("198.18.0.1", "198.18.0.2", true))
	rb := bird.Start(t, b, conf("198.18.0.2", "198.18.0.1", false))

	want := netip.MustParsePrefix("198.19.7.0/24")
	var learned bird.Route
	if err := poll.For(30*time.Second, func() error {
		up, err := rb.Established("peer")
		routes, rerr := rb.Routes()
		if err == nil && rerr == nil && up && routes[want].NextHop == netip.MustParseAddr("198.18.0.1") {
			learned = routes[want]
			return nil
		}
		return fmt.Errorf("up=%v (%v) routes=%v (%v)", up, err, routes, rerr)
	}); err != nil {
		out, _ := rb.Birdc("show", "route", "primary")
		t.Logf("show route primary:\n%s", out)
		t.Fatalf("b did not learn %v from a within 30s: %v", want, err)
	}
	if learned.Proto != "peer" {
		t.Errorf("learned from %q, want protocol peer", learned.Proto)
	}
	if up, err := ra.Established("peer"); err != nil || !up {
		t.Errorf("a's session: %v %v", up, err)
	}
	if _, err := ra.Established("nonesuch"); err == nil {
		t.Error("Established of an unknown protocol succeeded")
	}
	ra.Stop()
	ra.Stop() // idempotent
}
