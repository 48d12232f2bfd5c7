package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/ipam"
)

func TestIPAMCommands(t *testing.T) {
	e := newDSEnv(t)
	ctx := context.Background()
	e.addPool(t, "lab", "198.19.0.0/16", 26)
	e.addNode(t, "vm1", "198.18.0.1/24", 0)
	e.addNode(t, "vm2", "198.18.0.2/24", 0)
	live := e.addWorkload(t, "vm1", "w1", true)   // 198.19.0.0
	second := e.addWorkload(t, "vm1", "w2", true) // 198.19.0.1
	gone := e.addWorkload(t, "vm2", "w3", false)  // 198.19.0.64: its runtime never called DEL
	other := e.addWorkload(t, "vm2", "w4", true)  // 198.19.0.65
	if live.String() != "198.19.0.0" || gone.String() != "198.19.0.64" {
		t.Fatalf("allocated %s, %s, %s, %s; the expectations below assume 198.19.0.0 and 198.19.0.64", live, second, gone, other)
	}
	handleExists := func(t *testing.T, id string) bool {
		_, err := e.c.Handles().Get(ctx, id)
		if err != nil && !errors.Is(err, datastore.ErrNotFound) {
			t.Fatal(err)
		}
		return err == nil
	}

	steps := []dsStep{
		{name: "show", args: []string{"ipam", "show"},
			check: func(t *testing.T, out string) {
				want := [][]string{{"BLOCK", "NODE", "USED/CAPACITY"}, {"198.19.0.0/26", "vm1", "2/64"},
					{"198.19.0.64/26", "vm2", "2/64"}, {"TOTAL", "2", "blocks", "4/128"}}
				lines := strings.Split(strings.TrimSpace(out), "\n")
				if len(lines) != len(want) {
					t.Fatalf("ipam show:\n%s", out)
				}
				for i, l := range lines {
					if strings.Join(strings.Fields(l), " ") != strings.Join(want[i], " ") {
						t.Errorf("line %d = %q, want %q", i, l, strings.Join(want[i], " "))
					}
				}
			}},
		{name: "show json", args: []string{"ipam", "show", "-o", "json"},
			check: func(t *testing.T, out string) {
				var got ipamShowJSON
				if err := json.Unmarshal([]byte(out), &got); err != nil || len(got.Blocks) != 2 ||
					got.Total != (ipamTotalJSON{Blocks: 2, Used: 4, Capacity: 128}) || got.Blocks[1] != (blockUsageJSON{"198.19.0.64/26", "vm2", 2, 64}) {
					t.Errorf("ipam show -o json = %s (%v)", out, err)
				}
			}},
		{name: "show ip", args: []string{"ipam", "show", "--ip", "198.19.0.0"},
			want: []string{"HANDLE", "WORKLOAD", "198.19.0.0/26", "w1", "vm1/w1", "lab/ctr-w1", "vm1"}},
		{name: "show ip json", args: []string{"ipam", "show", "--ip", "198.19.0.64", "-o", "json"},
			check: func(t *testing.T, out string) {
				var got ipHolderJSON
				want := ipHolderJSON{IP: "198.19.0.64", Allocated: true, Pool: "lab", Block: "198.19.0.64/26", BlockNode: "vm2",
					Handle: "w3", Workload: "vm2/w3", Node: "vm2", WorkloadGone: true}
				if err := json.Unmarshal([]byte(out), &got); err != nil || got != want {
					t.Errorf("ipam show --ip -o json = %s (%v), want %+v", out, err, want)
				}
			}},
		{name: "show free ip in block", args: []string{"ipam", "show", "--ip", "198.19.0.9"}, want: []string{"198.19.0.9 is free (block 198.19.0.0/26 of node vm1)"}},
		{name: "show free ip in pool", args: []string{"ipam", "show", "--ip", "198.19.7.7"}, want: []string{"198.19.7.7 is free (pool lab; no block claimed for it yet)"}},
		{name: "show ip outside pools", args: []string{"ipam", "show", "--ip", "10.1.2.3"}, want: []string{"10.1.2.3 is in no pool"}},
		{name: "show bad ip", args: []string{"ipam", "show", "--ip", "198.19.0.300"}, wantErr: `--ip "198.19.0.300": want an IPv4 address`},
		{name: "show ipv6", args: []string{"ipam", "show", "--ip", "fd00::1"}, wantErr: "want an IPv4 address"},

		{name: "check finds the gone workload", args: []string{"ipam", "check"},
			wantErr: "ipam check: 1 problem;",
			want:    []string{"handle w3 holds 198.19.0.64 for workload vm2/w3, whose record is gone"}},
		{name: "check json",
			setup: func(t *testing.T) {
				// An allocation whose handle was deleted by hand.
				if err := e.c.Handles().Delete(ctx, "w4", 0); err != nil {
					t.Fatal(err)
				}
			},
			args: []string{"ipam", "check", "-o", "json"}, wantErr: "2 problems;",
			check: func(t *testing.T, out string) {
				var got ipamCheckJSON // followed by cobra's "Error: …" line, as stderr is out too
				if err := json.NewDecoder(strings.NewReader(out)).Decode(&got); err != nil || len(got.Problems) != 2 ||
					got.Problems[0] != "198.19.0.65 is allocated to handle w4, which does not exist" ||
					!strings.Contains(got.Problems[1], "handle w3") {
					t.Errorf("ipam check -o json = %s (%v)", out, err)
				}
			}},

		{name: "check finds an address given out for a container that never came",
			setup: func(t *testing.T) {
				// Docker's RequestAddress writes a handle without a workload key; a plugin crash
				// before CreateEndpoint leaves it so.
				if _, err := e.ipam.Assign(ctx, ipam.Request{Handle: "docker-0a1b2c", Node: "vm1"}); err != nil {
					t.Fatal(err)
				}
			},
			args: []string{"ipam", "check"}, wantErr: "3 problems;",
			want: []string{"handle docker-0a1b2c holds 198.19.0.", " on node vm1 for no workload: given out before its workload existed"},
			check: func(t *testing.T, _ string) {
				if _, err := e.ipam.ReleaseHandle(ctx, "docker-0a1b2c"); err != nil {
					t.Fatal(err)
				}
			}},

		{name: "release needs a flag", args: []string{"ipam", "release"}, wantErr: "give either --ip or --handle"},
		{name: "release takes one flag", args: []string{"ipam", "release", "--ip", "198.19.0.0", "--handle", "w1"}, wantErr: "give either --ip or --handle"},
		{name: "release bad ip", args: []string{"ipam", "release", "--ip", "nonsense"}, wantErr: "want an IPv4 address"},
		{name: "release free ip", args: []string{"ipam", "release", "--ip", "198.19.0.50"}, wantErr: "198.19.0.50 is not allocated"},
		{name: "release unknown handle", args: []string{"ipam", "release", "--handle", "nope"}, wantErr: "handle nope does not exist"},
		{name: "release ip of a live workload", args: []string{"ipam", "release", "--ip", "198.19.0.0"},
			wantErr: "belongs to workload vm1/w1, which still exists",
			check: func(t *testing.T, _ string) {
				if !handleExists(t, "w1") {
					t.Error("handle of a live workload released")
				}
			}},
		{name: "release ip with force", args: []string{"ipam", "release", "--ip", "198.19.0.0", "--force"},
			want: []string{"released 198.19.0.0 (handle w1)"},
			check: func(t *testing.T, _ string) {
				if b := e.blocks(t)["198.19.0.0/26"]; len(b.Allocations) != 1 || b.Allocations[0].IP != second {
					t.Errorf("block after release = %+v", b)
				}
				if handleExists(t, "w1") {
					t.Error("handle w1 kept after its only address was released")
				}
			}},
		{name: "release handle with force", args: []string{"ipam", "release", "--handle", "w2", "--force", "-o", "json"},
			check: func(t *testing.T, out string) {
				var got ipamReleaseJSON
				if err := json.Unmarshal([]byte(out), &got); err != nil || got.Handle != "w2" || len(got.Released) != 1 || got.Released[0] != second.String() {
					t.Errorf("ipam release -o json = %s (%v)", out, err)
				}
				if handleExists(t, "w2") {
					t.Error("handle w2 kept")
				}
			}},

		// w4 lost its handle but its workload still uses the address: freeing it would hand it
		// out twice, so gc keeps it.
		{name: "gc", args: []string{"ipam", "gc", "--grace", "0"},
			want: []string{"released 1 address: 198.19.0.64"},
			check: func(t *testing.T, _ string) {
				if handleExists(t, "w3") {
					t.Error("handle of the gone workload kept")
				}
				if b := e.blocks(t)["198.19.0.64/26"]; len(b.Allocations) != 1 || b.Allocations[0].Handle != "w4" {
					t.Errorf("block after gc = %+v", b)
				}
			}},
		{name: "gc keeps live workloads",
			setup: func(t *testing.T) { e.addWorkload(t, "vm2", "w5", true) },
			args:  []string{"ipam", "gc", "--grace", "0", "-o", "json"},
			check: func(t *testing.T, out string) {
				var got ipamGCJSON
				if err := json.Unmarshal([]byte(out), &got); err != nil || len(got.Released) != 0 || len(got.DeletedBlocks) != 0 {
					t.Errorf("ipam gc -o json = %s (%v)", out, err)
				}
				if !handleExists(t, "w5") {
					t.Error("gc released a live workload")
				}
			}},
		{name: "gc deletes blocks outside every pool",
			setup: func(t *testing.T) {
				if _, err := e.c.Blocks().Create(ctx, "10.9.0.0-26", datastore.Block{Version: datastore.CurrentVersion,
					CIDR: netip.MustParsePrefix("10.9.0.0/26"), Affinity: datastore.AffinityForNode("vm1")}); err != nil {
					t.Fatal(err)
				}
			},
			args: []string{"ipam", "gc", "--grace", "0"},
			want: []string{"deleted 1 empty block without a registered node or outside every pool: 10.9.0.0/26"}},
		{name: "gc negative grace", args: []string{"ipam", "gc", "--grace", "-1s"}, wantErr: "want zero or more"},
		{name: "check finds workloads using addresses IPAM does not give them",
			setup: func(t *testing.T) {
				// A workload record that claims the address of w5.
				w5, err := e.c.Workloads("vm2").Get(ctx, "w5")
				if err != nil {
					t.Fatal(err)
				}
				w := w5.Value
				w.ID, w.IfName = "w6", "cali00000000006"
				if _, err := e.c.Workloads("vm2").Create(ctx, "w6", w); err != nil {
					t.Fatal(err)
				}
			},
			args: []string{"ipam", "check"}, wantErr: "4 problems;",
			want: []string{"workload vm2/w6 uses 198.19.0.64, which is allocated to handle w5 of workload vm2/w5", "workload vm1/w1 uses 198.19.0.0, which is not allocated", "workload vm1/w2 uses 198.19.0.1, which is not allocated",
				"198.19.0.65 is allocated to handle w4, which does not exist"}},
		{name: "gc frees an allocation without handle once no workload uses it",
			setup: func(t *testing.T) {
				for _, w := range []string{"vm1/w1", "vm1/w2", "vm2/w4", "vm2/w6"} {
					if err := e.c.AllWorkloads().Delete(ctx, w, 0); err != nil {
						t.Fatal(err)
					}
				}
			},
			args: []string{"ipam", "gc", "--grace", "0"}, want: []string{"released 1 address: 198.19.0.65"}},
		// A block claimed for a node that never registered (a CNI config without nodeName on a host
		// named otherwise, before IPAM refused such claims).
		{name: "check finds a block of an unregistered node",
			setup: func(t *testing.T) {
				if _, err := e.c.Blocks().Create(ctx, "198.19.9.0-26", datastore.Block{Version: datastore.CurrentVersion,
					CIDR: netip.MustParsePrefix("198.19.9.0/26"), Affinity: datastore.AffinityForNode("nosuchnode")}); err != nil {
					t.Fatal(err)
				}
			},
			args: []string{"ipam", "check"}, wantErr: "1 problem;",
			want: []string{"block 198.19.9.0/26 is affine to node nosuchnode, which is not registered (0 of its addresses allocated)"}},
		{name: "gc deletes it", args: []string{"ipam", "gc", "--grace", "0"},
			want: []string{"deleted 1 empty block without a registered node or outside every pool: 198.19.9.0/26"}},
		{name: "check clean", args: []string{"ipam", "check"}, want: []string{"no problems found"}},
		{name: "check finds a pool over a node's uplink subnet",
			setup: func(t *testing.T) { e.addPool(t, "uplinks", "198.18.0.0/23", 26) },
			args:  []string{"ipam", "check"}, wantErr: "2 problems;",
			want: []string{"pool uplinks (198.18.0.0/23) overlaps the uplink subnet 198.18.0.0/24 of node vm1",
				"pool uplinks (198.18.0.0/23) overlaps the uplink subnet 198.18.0.0/24 of node vm2"}},
	}
	e.run(t, steps)
}
