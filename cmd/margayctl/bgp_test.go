package main

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
)

func TestBGPPeerCommands(t *testing.T) {
	e := datastoretest.Start(t)
	ep := e.Endpoints()[0]
	if out, err := margayctl(t, "--etcd-endpoints", ep, "bgp", "peer", "add", "gateway", "--peer-ip", "198.18.0.1",
		"--accept", "198.18.1.0/24", "--accept", "0.0.0.0/0"); err != nil || !strings.Contains(out, "added BGP peer gateway: 198.18.0.1 AS 64512") {
		t.Fatalf("add: %v\n%s", err, out)
	}
	for _, bad := range [][]string{
		{"bgp", "peer", "add", "x", "--peer-ip", "not-an-ip"},
		{"bgp", "peer", "add", "x", "--peer-ip", "198.18.0.9", "--accept", "198.18.1.1/24"},
		{"bgp", "peer", "add", "gateway", "--peer-ip", "198.18.0.9"},
	} {
		if out, err := margayctl(t, append([]string{"--etcd-endpoints", ep}, bad...)...); err == nil {
			t.Errorf("%v accepted:\n%s", bad, out)
		}
	}
	out, err := margayctl(t, "--etcd-endpoints", ep, "bgp", "peer", "list")
	if err != nil || !strings.Contains(out, "gateway  198.18.0.1  64512  (every node)  198.18.1.0/24,0.0.0.0/0") {
		t.Errorf("list: %v\n%s", err, out)
	}
	out, err = margayctl(t, "--etcd-endpoints", ep, "bgp", "peer", "list", "-o", "json")
	var peers []datastore.BGPPeer
	if err != nil || json.Unmarshal([]byte(out), &peers) != nil || len(peers) != 1 ||
		peers[0].Accept[1] != netip.MustParsePrefix("0.0.0.0/0") {
		t.Errorf("list -o json: %v\n%s", err, out)
	}
	if _, err := margayctl(t, "--etcd-endpoints", ep, "bgp", "peer", "delete", "gateway"); err != nil {
		t.Fatal(err)
	}
	if _, err := margayctl(t, "--etcd-endpoints", ep, "bgp", "peer", "delete", "gateway"); err == nil {
		t.Error("deleting a missing peer succeeded")
	}
	if out, _ := margayctl(t, "--etcd-endpoints", ep, "bgp", "peer", "list", "-o", "json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("list after delete: %s", out)
	}
}
