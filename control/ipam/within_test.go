package ipam

import (
	"context"
	"errors"
	"net/netip"
	"testing"
)

func assignWithin(i *IPAM, handle, node, within string) (Assignment, error) {
	return i.Assign(context.Background(), Request{Handle: handle, Node: node, Workload: node + "/" + handle, Within: netip.MustParsePrefix(within)})
}

// Within restricts the address: a subnet of a pool (Docker's --subnet), smaller than a block, or
// one address (Docker's --ip).
func TestAssignWithin(t *testing.T) {
	i, _ := newIPAM(t, pool("a", "198.19.0.0/17", 26), pool("b", "198.19.128.0/17", 26))
	for _, tc := range []struct {
		handle, node, within, ip, block string
		borrowed                        bool
	}{
		{"h1", "vm100", "198.19.132.0/24", "198.19.132.0", "198.19.132.0/26", false},
		{"h2", "vm100", "198.19.132.0/24", "198.19.132.1", "198.19.132.0/26", false},
		{"h3", "vm100", "198.19.132.48/28", "198.19.132.48", "198.19.132.0/26", false},
		{"h4", "vm100", "198.19.7.9/32", "198.19.7.9", "198.19.7.0/26", false},
		// Another node's block: borrowed, as Calico assigns a given address wherever it lies.
		{"h5", "vm101", "198.19.132.30/32", "198.19.132.30", "198.19.132.0/26", true},
		// A subnet another node's block covers only in part: the part outside it is claimed.
		{"h6", "vm101", "198.19.132.0/25", "198.19.132.64", "198.19.132.64/26", false},
	} {
		a, err := assignWithin(i, tc.handle, tc.node, tc.within)
		if err != nil {
			t.Fatalf("%s within %s: %v", tc.handle, tc.within, err)
		}
		if a.IP != netip.MustParseAddr(tc.ip) || a.Block != netip.MustParsePrefix(tc.block) || a.Borrowed != tc.borrowed {
			t.Errorf("%s within %s: got %+v, want %s in %s borrowed %v", tc.handle, tc.within, a, tc.ip, tc.block, tc.borrowed)
		}
	}
	// A plain request still takes the node's own blocks first.
	if a := assign(t, i, "plain", "vm100"); a.IP != netip.MustParseAddr("198.19.7.0") {
		t.Errorf("plain: %+v", a)
	}
	// Taken, or outside every pool: exhausted, and nothing written.
	for _, within := range []string{"198.19.7.9/32", "198.19.132.30/32", "10.0.0.0/24"} {
		if a, err := assignWithin(i, "x", "vm100", within); !errors.Is(err, ErrPoolExhausted) {
			t.Errorf("within %s: %+v, %v; want ErrPoolExhausted", within, a, err)
		}
	}
	if _, err := i.ds.Handles().Get(context.Background(), "x"); err == nil {
		t.Errorf("handle x written by refused requests")
	}
	// A full small subnet.
	for n := range 4 {
		if _, err := assignWithin(i, "f"+string(rune('0'+n)), "vm102", "198.19.9.4/30"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := assignWithin(i, "f4", "vm102", "198.19.9.4/30"); !errors.Is(err, ErrPoolExhausted) {
		t.Errorf("full /30: %v", err)
	}
	if _, err := assignWithin(i, "bad", "vm100", "198.19.9.5/30"); err == nil {
		t.Errorf("unmasked within accepted")
	}
	noProblems(t, i)
}
