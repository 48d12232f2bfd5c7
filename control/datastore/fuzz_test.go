package datastore

import (
	"bytes"
	"reflect"
	"testing"
)

// decoders runs the round-trip check for each kind; FuzzDecode picks one by index.
var decoders = []func(t *testing.T, name string, data []byte){
	func(t *testing.T, name string, data []byte) { roundTrip(t, poolKind, name, data) },
	func(t *testing.T, name string, data []byte) { roundTrip(t, bgpConfigKind, name, data) },
	func(t *testing.T, name string, data []byte) { roundTrip(t, bgpPeerKind, name, data) },
	func(t *testing.T, name string, data []byte) { roundTrip(t, nodeKind, name, data) },
	func(t *testing.T, name string, data []byte) { roundTrip(t, blockKind, name, data) },
	func(t *testing.T, name string, data []byte) { roundTrip(t, handleKind, name, data) },
	func(t *testing.T, name string, data []byte) { roundTrip(t, allWorkloadsKind, name, data) },
	func(t *testing.T, name string, data []byte) { roundTrip(t, nodeWorkloadsKind("host1"), name, data) },
	func(t *testing.T, name string, data []byte) { roundTrip(t, policyKind, name, data) },
	func(t *testing.T, name string, data []byte) { roundTrip(t, tierKind, name, data) },
	func(t *testing.T, name string, data []byte) { roundTrip(t, profileKind, name, data) },
	func(t *testing.T, name string, data []byte) {
		roundTrip(t, nodeDockerNetworksKind("host1"), name, data)
	},
}

// roundTrip checks that whatever decode accepts passes Validate, encodes, and decodes to the same
// value and the same bytes again.
func roundTrip[T any](t *testing.T, k *kind[T], name string, data []byte) {
	v, err := k.decode(name, data)
	if err != nil {
		return
	}
	if err := k.validate(&v); err != nil {
		t.Fatalf("decode(%q, %q) accepted %+v, which fails Validate: %v", name, data, v, err)
	}
	enc, err := k.encode(name, v)
	if err != nil {
		t.Fatalf("encode(%+v) after decode(%q): %v", v, data, err)
	}
	v2, err := k.decode(name, enc)
	if err != nil {
		t.Fatalf("decode(%q) of encoded %+v: %v", enc, v, err)
	}
	if !reflect.DeepEqual(v, v2) {
		t.Fatalf("round trip of %q changed the value:\n got %+v\nwant %+v", data, v2, v)
	}
	if enc2, err := k.encode(name, v2); err != nil || !bytes.Equal(enc, enc2) {
		t.Fatalf("re-encoding changed the bytes: %q then %q (%v)", enc, enc2, err)
	}
}

func FuzzDecode(f *testing.F) {
	seeds := []struct {
		kind uint8
		name string
		data string
	}{
		{0, "p", `{"version":1,"name":"p","cidr":"198.19.0.0/16","blockSize":26}`},
		{0, "p", `{"version":1,"cidr":"198.19.0.0/16","disabled":true}`},
		{0, "p", `{"version":2,"cidr":"198.19.0.0/16"}`},
		{1, "bgp", `{"version":1,"asn":64512,"nodeToNodeMesh":false}`},
		{1, "bgp", `{"version":1}`},
		{2, "gw", `{"version":1,"peerIP":"198.18.0.254","asn":64513,"node":"host1","password":"s"}`},
		{3, "host1", `{"version":1,"name":"host1","addressV4":"198.18.0.1/24","uplink":"ens32","labels":{"rack":"a"}}`},
		{3, "host1", `{"version":1,"addressV4":"198.18.0.1/24","labels":{}}`},
		{4, "198.19.0.0-26", `{"version":1,"cidr":"198.19.0.0/26","affinity":"host:host1","allocations":[{"ip":"198.19.0.1","handle":"h1"}],"seq":3}`},
		{4, "198.19.0.0-26", `{"version":1,"allocations":[]}`},
		{5, "h1", `{"version":1,"id":"h1","node":"host1","ips":["198.19.0.1"],"workload":"host1/w1"}`},
		{6, "host1/w1", `{"version":1,"id":"w1","name":"web","node":"host1","ifName":"cali0b7f49da20a","mac":"02:42:c6:13:00:01","ipv4":["198.19.0.1/32"]}`},
		{7, "w1", `{"version":1,"name":"web","ifName":"cali0b7f49da20a","mac":"02:42:c6:13:00:01","labels":{"app":"web"}}`},
		{6, "host1/w2", `{"version":1,"id":"w2","name":"web","node":"host1","ifName":"cali0b7f49da20b","mac":"02:42:c6:13:00:02","addDurationSeconds":0.125}`},
		{7, "w3", `{"version":1,"name":"web","ifName":"cali0b7f49da20c","mac":"02:42:c6:13:00:03","addDurationSeconds":-1}`},
		{8, "allow-web", `{"version":1,"order":100,"selector":"app == 'web'","ingress":[{"action":"allow","protocol":"tcp","source":{"selector":"role in {'fe','lb'}","nets":["198.19.0.0/16"]},"destination":{"ports":[80,"8000:8080"]}}]}`},
		{8, "deny", `{"version":1,"types":["Egress"],"egress":[{"action":"Deny","protocol":"icmp","icmp":{"type":8,"code":0},"destination":{"notNets":["198.18.0.0/15"],"notSelector":"has(x)"}}]}`},
		{8, "bad", `{"version":1,"selector":"app ==","ingress":[{"action":"allow","destination":{"ports":[80]}}]}`},
		{8, "e", `{"version":1,"ingress":[{"action":"Allow","destination":{"ports":[],"nets":[]}}]}`},
		{8, "prod/web", `{"version":1,"namespace":"prod","tier":"sec","selector":"app == 'web'","ingress":[{"action":"Log","source":{"namespaceSelector":"team == 'a'","serviceAccounts":{"names":["sa"],"selector":"role == 'x'"}}},{"action":"pass","protocol":"tcp","destination":{"ports":["http",80]}}]}`},
		{8, "g", `{"version":1,"namespaceSelector":"all()","serviceAccountSelector":"has(x)","tier":"default","ingress":[{"action":"allow","protocol":"udp","source":{"notPorts":["dns"]}}]}`},
		{8, "Prod/x", `{"version":1,"ingress":[]}`},
		{8, "prod/x", `{"version":1,"namespace":"dev"}`},
		{9, "sec", `{"version":1,"order":100,"defaultAction":"Pass"}`},
		{9, "default", `{"version":1,"order":1000000}`},
		{9, "default", `{"version":1,"order":5}`},
		{9, "t", `{"version":1,"defaultAction":"Allow"}`},
		{10, "net1", `{"version":1,"labelsToApply":{"net":"one"},"ingress":[{"action":"allow","source":{"selector":"net == 'one'"}}],"egress":[{"action":"allow"}]}`},
		{10, "p", `{"version":1,"ingress":[{"action":"pass"}]}`},
		{6, "host1/w4", `{"version":1,"id":"w4","name":"web","node":"host1","ifName":"cali0b7f49da20d","mac":"02:42:c6:13:00:04","profiles":["net1","kns.prod"],"ports":[{"name":"http","protocol":"tcp","port":8080}]}`},
		{6, "host1/w5", `{"version":1,"id":"w5","name":"web","node":"host1","ifName":"cali0b7f49da20e","mac":"02:42:c6:13:00:05","profiles":["a","a"],"ports":[{"name":"HTTP","protocol":"icmp","port":0}]}`},
		{11, "5a6f2f4e0d7c", `{"version":1,"node":"host1","id":"5a6f2f4e0d7c","name":"net1"}`},
		{11, "5a6f2f4e0d7c", `{"version":1,"name":"../x"}`},
		{0, "p", `null`},
		{0, "p", `{"version":1.5}`},
		{4, "198.19.0.0-26", `{"version":1,"cidr":"198.19.0.0/26","allocations":[{"ip":"198.19.0.1","handle":"h"},{"ip":"198.19.0.1","handle":"h"}]}`},
		{0, "../p", `{"version":1,"cidr":"198.19.0.0/16"}`},
	}
	for _, s := range seeds {
		f.Add(s.kind, s.name, []byte(s.data))
	}
	f.Fuzz(func(t *testing.T, kind uint8, name string, data []byte) {
		decoders[int(kind)%len(decoders)](t, name, data)
	})
}
