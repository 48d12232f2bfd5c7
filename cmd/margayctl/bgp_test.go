package main

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
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

	// A password comes from a file, is stored for the agents, and is never printed.
	const secret = "md5-s3cret"
	pwFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(pwFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := margayctl(t, "--etcd-endpoints", ep, "bgp", "peer", "add", "tor", "--peer-ip", "198.18.0.2", "--node", "vm100",
		"--password-file", pwFile); err != nil {
		t.Fatalf("add with password: %v\n%s", err, out)
	}
	c := datastoretest.Connect(t, datastore.Config{Endpoints: e.Endpoints()})
	if it, err := c.BGPPeers().Get(t.Context(), "tor"); err != nil || it.Value.Password != secret {
		t.Errorf("stored peer %+v, %v; want the secret from the file", it.Value, err)
	}
	out, err = margayctl(t, "--etcd-endpoints", ep, "bgp", "peer", "list")
	if err != nil || strings.Contains(out, secret) || !strings.Contains(out, "tor      198.18.0.2  64512  vm100         -                        set") {
		t.Errorf("list with a password: %v\n%s", err, out)
	}
	out, err = margayctl(t, "--etcd-endpoints", ep, "bgp", "peer", "list", "-o", "json")
	var shown []struct {
		Name        string `json:"name"`
		Password    string `json:"password"`
		PasswordSet bool   `json:"passwordSet"`
	}
	if err != nil || strings.Contains(out, secret) || json.Unmarshal([]byte(out), &shown) != nil || len(shown) != 2 ||
		shown[0].PasswordSet || !shown[1].PasswordSet || shown[1].Password != "" {
		t.Errorf("list -o json with a password: %v\n%s", err, out)
	}
	long := filepath.Join(t.TempDir(), "long")
	if err := os.WriteFile(long, []byte(strings.Repeat("x", 81)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := margayctl(t, "--etcd-endpoints", ep, "bgp", "peer", "add", "x", "--peer-ip", "198.18.0.3", "--password-file", long); err == nil ||
		!strings.Contains(err.Error(), "TCP MD5 allows 80") {
		t.Errorf("an 81-byte secret: %v\n%s", err, out)
	}
	if _, err := margayctl(t, "--etcd-endpoints", ep, "bgp", "peer", "delete", "tor"); err != nil {
		t.Fatal(err)
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

// bgp peer add without --accept and --password-file, and bgp peer delete, are aliases of the
// Calico forms: the peer is the BGPPeer margayctl get bgppeer shows.
func TestBGPPeerAliases(t *testing.T) {
	e := newDSEnv(t)
	e.run(t, []dsStep{
		{name: "add", args: []string{"bgp", "peer", "add", "rr", "--peer-ip", "198.18.0.5", "--asn", "65001", "--node", "vm1"},
			want: []string{"Successfully created 1 'BGPPeer' resource(s)"}},
		{name: "get bgppeer", args: []string{"get", "bgppeer"}, check: wantRows("NAME PEERIP NODE ASN", "rr 198.18.0.5 vm1 65001")},
		{name: "add again", args: []string{"bgp", "peer", "add", "rr", "--peer-ip", "198.18.0.6"}, wantErr: "resource already exists: BGPPeer(rr)"},
		{name: "a bad address", args: []string{"bgp", "peer", "add", "x", "--peer-ip", "not-an-ip"}, wantErr: `document 1 (BGPPeer "x"): spec.peerIP:`},
		{name: "with an accept list: Margay's record", args: []string{"bgp", "peer", "add", "gw", "--peer-ip", "198.18.0.1", "--accept", "0.0.0.0/0"},
			want: []string{"added BGP peer gw: 198.18.0.1 AS 64512"}},
		{name: "which get shows as far as a BGPPeer can", args: []string{"get", "bgppeer", "gw", "-o", "yaml"}, want: []string{"peerIP: 198.18.0.1", "asNumber: 64512"}},
		{name: "delete", args: []string{"bgp", "peer", "delete", "rr"}, want: []string{"Successfully deleted 1 'BGPPeer' resource(s)"}},
		{name: "delete again", args: []string{"bgp", "peer", "delete", "rr"}, wantErr: "resource does not exist: BGPPeer(rr)"},
	})
}
