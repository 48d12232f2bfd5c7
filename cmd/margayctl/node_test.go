package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/margaynet/margay/control/datastore"
)

func TestNodeCommands(t *testing.T) {
	e := newDSEnv(t)
	ctx := context.Background()
	e.addPool(t, "lab", "198.19.0.0/16", 26)
	e.addNode(t, "vm1", "198.18.0.1/24", 0)
	e.addNode(t, "vm2", "198.18.0.2/24", 65001)
	e.addWorkload(t, "vm1", "w1", true)
	e.addWorkload(t, "vm1", "w2", true)
	e.addWorkload(t, "vm1", "w3", false) // handle only: the record is already gone
	e.addWorkload(t, "vm2", "w4", true)
	// vm1 owns a second, empty block, and vm2 borrowed 198.19.0.10 from vm1's first block (as
	// IPAM does when the pools have no free block left).
	if _, err := e.c.Blocks().Create(ctx, "198.19.1.0-26", datastore.Block{Version: datastore.CurrentVersion,
		CIDR: netip.MustParsePrefix("198.19.1.0/26"), Affinity: datastore.AffinityForNode("vm1")}); err != nil {
		t.Fatal(err)
	}
	borrowed := netip.MustParseAddr("198.19.0.10")
	if _, err := e.c.Handles().Create(ctx, "w5", datastore.Handle{Version: datastore.CurrentVersion, ID: "w5", Node: "vm2",
		Workload: "vm2/w5", IPs: []netip.Addr{borrowed}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Workloads("vm2").Create(ctx, "w5", datastore.Workload{Version: datastore.CurrentVersion, ID: "w5", Name: "ctr-w5",
		Node: "vm2", IfName: "cali0123456789a", MAC: "ee:ee:ee:ee:ee:ee", IPv4: []netip.Prefix{netip.PrefixFrom(borrowed, 32)}}); err != nil {
		t.Fatal(err)
	}
	it, err := e.c.Blocks().Get(ctx, "198.19.0.0-26")
	if err != nil {
		t.Fatal(err)
	}
	b := it.Value
	b.Allocations = append(b.Allocations, datastore.Allocation{IP: borrowed, Handle: "w5"})
	if _, err := e.c.Blocks().Update(ctx, it.Name, b, it.ModRevision); err != nil {
		t.Fatal(err)
	}

	exists := func(t *testing.T, err error) bool {
		if err != nil && !errors.Is(err, datastore.ErrNotFound) {
			t.Fatal(err)
		}
		return err == nil
	}
	steps := []dsStep{
		{name: "list", args: []string{"node", "list"},
			check: func(t *testing.T, out string) {
				want := []string{"NAME ADDRESS UPLINK ASN BLOCKS WORKLOADS", "vm1 198.18.0.1/24 eth0 (64512) 2 2", "vm2 198.18.0.2/24 eth0 65001 1 2"}
				lines := strings.Split(strings.TrimSpace(out), "\n")
				if len(lines) != len(want) {
					t.Fatalf("node list:\n%s", out)
				}
				for i, l := range lines {
					if got := strings.Join(strings.Fields(l), " "); got != want[i] {
						t.Errorf("line %d = %q, want %q", i, got, want[i])
					}
				}
			}},
		{name: "list with cluster asn",
			setup: func(t *testing.T) {
				if _, err := e.c.BGPConfig().Put(ctx, datastore.BGPConfig{Version: datastore.CurrentVersion, ASN: 64600}); err != nil {
					t.Fatal(err)
				}
			},
			args: []string{"node", "list", "-o", "json"},
			check: func(t *testing.T, out string) {
				var got []nodeJSON
				if err := json.Unmarshal([]byte(out), &got); err != nil || len(got) != 2 {
					t.Fatalf("node list -o json = %s (%v)", out, err)
				}
				if n := got[0]; n.Name != "vm1" || n.ASN != 64600 || !n.ASNInherited || len(n.Blocks) != 2 || n.Workloads != 2 || n.Uplink != "eth0" {
					t.Errorf("vm1 = %+v", n)
				}
				if n := got[1]; n.Name != "vm2" || n.ASN != 65001 || n.ASNInherited {
					t.Errorf("vm2 = %+v", n)
				}
			}},
		{name: "delete unknown", args: []string{"node", "delete", "vm9"}, wantErr: `node "vm9" not found`},
		{name: "delete bad name", args: []string{"node", "delete", "a/b"}, wantErr: "node delete: name"},
		{name: "delete", args: []string{"node", "delete", "vm1"},
			want: []string{"deleted node vm1: 2 workloads, 3 handles (198.19.0.0, 198.19.0.1, 198.19.0.2), 1 block;",
				"kept 198.19.0.0/26 without affinity"},
			check: func(t *testing.T, _ string) {
				if _, err := e.c.Nodes().Get(ctx, "vm1"); exists(t, err) {
					t.Error("node record kept")
				}
				if ws, _, err := e.c.Workloads("vm1").List(ctx); err != nil || len(ws) != 0 {
					t.Errorf("workloads of vm1 = %v, %v", ws, err)
				}
				for _, h := range []string{"w1", "w2", "w3"} {
					if _, err := e.c.Handles().Get(ctx, h); exists(t, err) {
						t.Errorf("handle %s kept", h)
					}
				}
				bs := e.blocks(t)
				if _, ok := bs["198.19.1.0/26"]; ok {
					t.Error("empty block of vm1 kept")
				}
				if b := bs["198.19.0.0/26"]; b.Affinity != "" || len(b.Allocations) != 1 || b.Allocations[0].IP != borrowed {
					t.Errorf("block with vm2's borrowed address = %+v; want it kept without affinity", b)
				}
				// vm2 keeps everything.
				if _, err := e.c.Handles().Get(ctx, "w4"); !exists(t, err) {
					t.Error("handle of vm2 released")
				}
				if _, err := e.c.Workloads("vm2").Get(ctx, "w4"); !exists(t, err) {
					t.Error("workload of vm2 deleted")
				}
			}},
		{name: "delete twice", args: []string{"node", "delete", "vm1"}, wantErr: `node "vm1" not found`},
		{name: "list after delete", args: []string{"node", "list"},
			check: func(t *testing.T, out string) {
				if strings.Contains(out, "vm1") || !strings.Contains(out, "vm2") {
					t.Errorf("node list:\n%s", out)
				}
			}},
		{name: "ipam clean after delete", args: []string{"ipam", "check"}, want: []string{"no problems found"}},
		{name: "delete leftovers without record",
			setup: func(t *testing.T) {
				// An agent that claimed a block, then was removed by hand.
				if err := e.c.Nodes().Delete(ctx, "vm2", 0); err != nil {
					t.Fatal(err)
				}
			},
			args: []string{"node", "delete", "vm2", "-o", "json"},
			check: func(t *testing.T, out string) {
				var got nodeDeleteJSON
				if err := json.Unmarshal([]byte(out), &got); err != nil || got.Record || len(got.Workloads) != 2 ||
					len(got.Handles) != 2 || len(got.Released) != 2 || len(got.DeletedBlocks) != 1 {
					t.Errorf("node delete -o json = %s (%v)", out, err)
				}
				if bs := e.blocks(t); len(bs) != 1 || len(bs["198.19.0.0/26"].Allocations) != 0 {
					t.Errorf("blocks left = %+v; want only the orphaned, now empty 198.19.0.0/26", bs)
				}
			}},
		{name: "gc deletes the orphaned block", args: []string{"ipam", "gc", "--grace", "0"},
			want: []string{"deleted 1 empty block without a registered node or outside every pool: 198.19.0.0/26"}},
	}
	e.run(t, steps)
}
