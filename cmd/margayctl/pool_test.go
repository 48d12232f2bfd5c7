package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/control/ipam"
)

// dsStep is one margayctl run of a scenario against a datastore: the steps of a table share it and
// run in order.
type dsStep struct {
	name    string
	setup   func(t *testing.T)
	args    []string
	wantErr string   // substring of the error; "" means the command must succeed
	want    []string // substrings of the output
	check   func(t *testing.T, out string)
}

// dsEnv is an embedded etcd, a client for seeding and checking it, and IPAM on it.
type dsEnv struct {
	endpoint string
	c        *datastore.Client
	ipam     *ipam.IPAM
}

func newDSEnv(t *testing.T) *dsEnv {
	t.Helper()
	e := datastoretest.Start(t)
	c := datastoretest.Connect(t, datastore.Config{Endpoints: e.Endpoints()})
	return &dsEnv{endpoint: strings.Join(e.Endpoints(), ","), c: c,
		ipam: ipam.New(c, ipam.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))}
}

func (e *dsEnv) run(t *testing.T, steps []dsStep) {
	t.Helper()
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if s.setup != nil {
				s.setup(t)
			}
			out, err := margayctl(t, append([]string{"--etcd-endpoints", e.endpoint}, s.args...)...)
			switch {
			case s.wantErr == "" && err != nil:
				t.Fatalf("margayctl %s: %v\n%s", strings.Join(s.args, " "), err, out)
			case s.wantErr != "" && err == nil:
				t.Fatalf("margayctl %s succeeded, want error %q\n%s", strings.Join(s.args, " "), s.wantErr, out)
			case s.wantErr != "" && !strings.Contains(err.Error(), s.wantErr):
				t.Fatalf("margayctl %s: error %q, want it to contain %q", strings.Join(s.args, " "), err, s.wantErr)
			}
			for _, w := range s.want {
				if !strings.Contains(out, w) {
					t.Errorf("margayctl %s: output lacks %q:\n%s", strings.Join(s.args, " "), w, out)
				}
			}
			if s.check != nil {
				s.check(t, out)
			}
		})
	}
}

func (e *dsEnv) addPool(t *testing.T, name, cidr string, blockSize int) {
	t.Helper()
	p := datastore.Pool{Version: datastore.CurrentVersion, Name: name, CIDR: netip.MustParsePrefix(cidr), BlockSize: blockSize}
	if _, err := e.c.Pools().Create(context.Background(), name, p); err != nil {
		t.Fatal(err)
	}
}

func (e *dsEnv) addNode(t *testing.T, name, addr string, asn uint32) {
	t.Helper()
	n := datastore.Node{Version: datastore.CurrentVersion, Name: name, AddressV4: netip.MustParsePrefix(addr), Uplink: "eth0", ASN: asn}
	if _, err := e.c.Nodes().Create(context.Background(), name, n); err != nil {
		t.Fatal(err)
	}
}

// addWorkload allocates an address as CNI ADD does (handle id, workload "<node>/<id>") and, when
// record is set, writes the workload record.
func (e *dsEnv) addWorkload(t *testing.T, node, id string, record bool) netip.Addr {
	t.Helper()
	ctx := context.Background()
	datastoretest.RegisterNodes(t, e.c, node)
	a, err := e.ipam.Assign(ctx, ipam.Request{Handle: id, Node: node, Workload: node + "/" + id})
	if err != nil {
		t.Fatal(err)
	}
	if record {
		w := datastore.Workload{Version: datastore.CurrentVersion, ID: id, Name: "ctr-" + id, Namespace: "lab", Node: node,
			IfName: fmt.Sprintf("cali%011x", len(id)*7919+int(a.IP.As4()[3])), MAC: "ee:ee:ee:ee:ee:ee",
			IPv4: []netip.Prefix{netip.PrefixFrom(a.IP, 32)}}
		if _, err := e.c.Workloads(node).Create(ctx, id, w); err != nil {
			t.Fatal(err)
		}
	}
	return a.IP
}

func (e *dsEnv) pool(t *testing.T, name string) (datastore.Pool, bool) {
	t.Helper()
	it, err := e.c.Pools().Get(context.Background(), name)
	if errors.Is(err, datastore.ErrNotFound) {
		return datastore.Pool{}, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return it.Value, true
}

func (e *dsEnv) blocks(t *testing.T) map[string]datastore.Block {
	t.Helper()
	items, _, err := e.c.Blocks().List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]datastore.Block{}
	for _, it := range items {
		m[it.Value.CIDR.String()] = it.Value
	}
	return m
}

// pool add, delete, enable and disable are aliases of the Calico forms; list shows the
// occupancy no Calico form shows, delete --force what none does.
func TestPoolCommands(t *testing.T) {
	e := newDSEnv(t)
	var inUse netip.Addr
	steps := []dsStep{
		{name: "add", args: []string{"pool", "add", "lab", "--cidr", "198.19.0.0/16"},
			want: []string{"Successfully created 1 'IPPool' resource(s)"},
			check: func(t *testing.T, _ string) {
				if p, ok := e.pool(t, "lab"); !ok || p.CIDR != netip.MustParsePrefix("198.19.0.0/16") || p.BlockSize != 26 || p.Disabled {
					t.Errorf("stored pool = %+v, %v", p, ok)
				}
			}},
		{name: "add disabled with block size", args: []string{"pool", "add", "small", "--cidr", "198.20.0.0/24", "--block-size", "28", "--disabled"},
			check: func(t *testing.T, out string) {
				if p, ok := e.pool(t, "small"); !ok || p.BlockSize != 28 || !p.Disabled {
					t.Errorf("stored pool = %+v, %v", p, ok)
				}
			}},
		{name: "as get ippool shows it", args: []string{"get", "ippool", "small", "-o", "yaml"}, want: []string{"blockSize: 28", "disabled: true", "cidr: 198.20.0.0/24"}},
		{name: "overlapping pool", args: []string{"pool", "add", "over", "--cidr", "198.19.128.0/17"},
			wantErr: "198.19.128.0/17 overlaps pool lab (198.19.0.0/16)"},
		{name: "pool containing another", args: []string{"pool", "add", "big", "--cidr", "198.0.0.0/8"},
			wantErr: "overlaps pool"},
		{name: "pool over a node's uplink subnet", setup: func(t *testing.T) { e.addNode(t, "vm9", "198.18.0.9/24", 0) },
			args:    []string{"pool", "add", "uplinks", "--cidr", "198.18.0.0/16"},
			wantErr: "198.18.0.0/16 overlaps the uplink subnet 198.18.0.0/24 of node vm9 (address 198.18.0.9/24)",
			check: func(t *testing.T, _ string) {
				if _, ok := e.pool(t, "uplinks"); ok {
					t.Error("the pool was created")
				}
			}},
		{name: "duplicate name", args: []string{"pool", "add", "lab", "--cidr", "10.0.0.0/8"}, wantErr: "resource already exists: IPPool(lab)"},
		{name: "host bits", args: []string{"pool", "add", "x", "--cidr", "198.21.0.1/16"}, wantErr: `document 1 (IPPool "x"): spec.cidr:`},
		{name: "bad cidr", args: []string{"pool", "add", "x", "--cidr", "198.21.0.0"}, wantErr: `spec.cidr: "198.21.0.0" is an address, not a CIDR`},
		{name: "ipv6 cidr", args: []string{"pool", "add", "x", "--cidr", "fd00::/64"}, wantErr: "spec.cidr: not supported by Margay (Margay is IPv4-only)"},
		{name: "no cidr", args: []string{"pool", "add", "x"}, wantErr: "--cidr is required"},
		{name: "block size too small", args: []string{"pool", "add", "x", "--cidr", "198.21.0.0/24", "--block-size", "16"}, wantErr: "spec.blockSize: 16: want 20 to 32"},
		{name: "bad name", args: []string{"pool", "add", "a..b", "--cidr", "198.21.0.0/24"}, wantErr: `metadata.name: "a..b" is not a valid IPPool name`},
		{name: "-o refused", args: []string{"pool", "add", "x", "--cidr", "198.21.0.0/24", "-o", "json"}, wantErr: "only reports what it wrote",
			check: func(t *testing.T, _ string) {
				if _, ok := e.pool(t, "x"); ok {
					t.Error("pool x created although -o was wrong")
				}
			}},

		{name: "list", setup: func(t *testing.T) { inUse = e.addWorkload(t, "vm1", "w1", true) },
			args: []string{"pool", "list"},
			want: []string{"NAME", "CIDR", "BLOCK SIZE", "DISABLED", "BLOCKS", "IPS USED"},
			check: func(t *testing.T, out string) {
				lines := strings.Split(strings.TrimSpace(out), "\n")
				if len(lines) != 3 || strings.Join(strings.Fields(lines[1]), " ") != "lab 198.19.0.0/16 26 false 1 1/65536" ||
					strings.Join(strings.Fields(lines[2]), " ") != "small 198.20.0.0/24 28 true 0 0/256" {
					t.Errorf("pool list:\n%s", out)
				}
			}},
		{name: "list json", args: []string{"pool", "list", "-o", "json"},
			check: func(t *testing.T, out string) {
				var got []poolJSON
				if err := json.Unmarshal([]byte(out), &got); err != nil || len(got) != 2 || got[0].Name != "lab" || got[0].Blocks != 1 ||
					got[0].Used != 1 || got[0].Size != 65536 || !got[1].Disabled {
					t.Errorf("pool list -o json = %s (%v)", out, err)
				}
			}},
		{name: "list -o yaml", args: []string{"pool", "list", "-o", "yaml"}, wantErr: "unknown output format"},

		{name: "delete in use", args: []string{"pool", "delete", "lab"},
			wantErr: "pool in use: 1 address in 1 block (198.19.0.0/26 on vm1); delete those workloads first (spec.disabled: true stops new assignments); or margayctl pool delete lab --force deletes the pool anyway",
			check: func(t *testing.T, _ string) {
				if _, ok := e.pool(t, "lab"); !ok {
					t.Error("pool in use deleted")
				}
			}},
		{name: "disable", args: []string{"pool", "disable", "lab"}, want: []string{"Successfully replaced 1 'IPPool' resource(s)"},
			check: func(t *testing.T, _ string) {
				if p, _ := e.pool(t, "lab"); !p.Disabled || p.CIDR != netip.MustParsePrefix("198.19.0.0/16") || p.BlockSize != 26 {
					t.Errorf("pool not disabled, or changed otherwise: %+v", p)
				}
			}},
		{name: "disable twice", args: []string{"pool", "disable", "lab"}, want: []string{"Successfully replaced 1 'IPPool' resource(s)"}},
		{name: "enable", args: []string{"pool", "enable", "lab"},
			check: func(t *testing.T, _ string) {
				if p, _ := e.pool(t, "lab"); p.Disabled {
					t.Error("pool still disabled")
				}
			}},
		{name: "enable unknown", args: []string{"pool", "enable", "nope"}, wantErr: "resource does not exist: IPPool(nope)"},
		{name: "delete unknown", args: []string{"pool", "delete", "nope"}, wantErr: "resource does not exist: IPPool(nope)"},
		{name: "force delete unknown", args: []string{"pool", "delete", "nope", "--force"}, wantErr: `pool "nope" not found`},
		{name: "delete without name", args: []string{"pool", "delete"}, wantErr: "accepts 1 arg"},

		{name: "force delete in use",
			setup: func(t *testing.T) {
				// A second, empty block of the pool, as a node that released its workloads leaves.
				if _, err := e.c.Blocks().Create(context.Background(), "198.19.1.0-26", datastore.Block{Version: datastore.CurrentVersion,
					CIDR: netip.MustParsePrefix("198.19.1.0/26"), Affinity: datastore.AffinityForNode("vm2")}); err != nil {
					t.Fatal(err)
				}
			},
			args: []string{"pool", "delete", "lab", "--force"},
			want: []string{"deleted pool lab (198.19.0.0/16) and 1 empty block", "kept 1 block with addresses in use (198.19.0.0/26)"},
			check: func(t *testing.T, _ string) {
				if _, ok := e.pool(t, "lab"); ok {
					t.Error("pool lab still exists")
				}
				bs := e.blocks(t)
				if _, ok := bs["198.19.1.0/26"]; ok {
					t.Error("empty block of the deleted pool kept")
				}
				if b, ok := bs["198.19.0.0/26"]; !ok || len(b.Allocations) != 1 || b.Allocations[0].IP != inUse {
					t.Errorf("block in use = %+v, %v; want it kept with %s", b, ok, inUse)
				}
			}},
		{name: "list after delete", args: []string{"pool", "list"},
			check: func(t *testing.T, out string) {
				if strings.Contains(out, "lab") || !strings.Contains(out, "small") {
					t.Errorf("pool list:\n%s", out)
				}
			}},
		{name: "delete empty pool", args: []string{"pool", "delete", "small"}, want: []string{"Successfully deleted 1 'IPPool' resource(s)"},
			check: func(t *testing.T, out string) {
				if _, ok := e.pool(t, "small"); ok {
					t.Error("pool small still exists")
				}
			}},
		{name: "force delete -o json", setup: func(t *testing.T) { e.addPool(t, "third", "198.22.0.0/24", 26) },
			args: []string{"pool", "delete", "third", "--force", "-o", "json"},
			check: func(t *testing.T, out string) {
				var got poolDeleteJSON
				if err := json.Unmarshal([]byte(out), &got); err != nil || got.Pool != "third" || len(got.DeletedBlocks) != 0 {
					t.Errorf("-o json = %s (%v)", out, err)
				}
			}},
	}
	e.run(t, steps)
}
