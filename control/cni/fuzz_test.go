package cni

import (
	"encoding/json"
	"errors"
	"maps"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/margaynet/margay/control/datastore"
)

// fuzzHost stands in for os.Hostname, so that a config without nodeName parses the same anywhere.
func fuzzHost() (string, error) { return "fuzz-host", nil }

// FuzzConfig feeds arbitrary bytes to the network config parser and arbitrary strings to the
// CNI_ARGS parser (and the workload spec built from them). Neither may panic; every rejection is
// a CNI error with the right code and a message that says it is margay-cni's and what is wrong;
// whatever is accepted must survive a round trip: encode the accepted config, parse it again,
// and get the same settings and the same bytes.
func FuzzConfig(f *testing.F) {
	for _, seed := range fuzzSeeds(f) {
		f.Add(seed, "")
		f.Add(seed, "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc")
	}
	for _, args := range []string{"K8S_POD_NAME=web", "K8S_POD_NAME", "=x", ";;a=b;", "K8S_POD_NAMESPACE=kube.system;K8S_POD_NAME=p",
		"K8S_POD_NAMESPACE=default;K8S_POD_NAME=" + strings.Repeat("p", 300)} {
		f.Add([]byte(`{"cniVersion":"1.0.0","name":"margay","type":"margay-cni","datastore":{"endpoints":["http://127.0.0.1:2379"]}}`), args)
	}
	f.Fuzz(func(t *testing.T, data []byte, cniArgs string) {
		checkArgs(t, cniArgs)
		c, err := parseConf(data, fuzzHost)
		if err != nil {
			// An unknown field is code 2, "unsupported field"; everything else code 7.
			code := uint(types.ErrInvalidNetworkConfig)
			if te, ok := errors.AsType[*types.Error](err); ok && strings.Contains(te.Msg, "invalid network config: unknown field ") {
				code = types.ErrUnsupportedField
			}
			checkError(t, err, code, "margay-cni: invalid network config: ")
			return
		}
		checkAccepted(t, data, c)
		ws, err := spec(&skel.CmdArgs{ContainerID: "ctr-fuzz", Netns: "/var/run/netns/fuzz", IfName: "eth0", Args: cniArgs}, c)
		if err != nil {
			checkError(t, err, types.ErrInvalidEnvironmentVariables, "margay-cni: ")
			return
		}
		if ws.ID == "" || ws.Node != c.NodeName {
			t.Fatalf("spec from CNI_ARGS %q: %+v", cniArgs, ws)
		}
	})
}

// checkError insists on a *types.Error with the code and a message that starts with prefix and
// says more than that.
func checkError(t *testing.T, err error, code uint, prefix string) {
	t.Helper()
	te, ok := errors.AsType[*types.Error](err)
	if !ok {
		t.Fatalf("error %v (%T) is no CNI error", err, err)
	}
	if te.Code != code {
		t.Fatalf("error code %d, want %d: %s", te.Code, code, te.Msg)
	}
	if !strings.HasPrefix(te.Msg, prefix) || len(strings.TrimSpace(strings.TrimPrefix(te.Msg, prefix))) == 0 {
		t.Fatalf("error message %q does not start with %q and say what is wrong", te.Msg, prefix)
	}
	if !utf8.ValidString(te.Msg) {
		t.Fatalf("error message is not UTF-8: %q", te.Msg)
	}
	// The runtime prints what the plugin writes: it must encode.
	if _, err := json.Marshal(te); err != nil {
		t.Fatalf("error %q does not encode: %v", te.Msg, err)
	}
}

// checkAccepted checks an accepted config: its derived settings are sane, and encoding it and
// parsing the encoding again gives the same settings, whose encoding is the same bytes.
func checkAccepted(t *testing.T, data []byte, c *netConf) {
	t.Helper()
	if c.NodeName == "" || c.BPFFSRoot == "" || (c.Datastore == nil && c.DatastoreConfig == "") {
		t.Fatalf("accepted %q with nodeName %q, bpffsRoot %q, no datastore", data, c.NodeName, c.BPFFSRoot)
	}
	if c.policyTimeout < 0 || c.MTU < 0 {
		t.Fatalf("accepted %q with policy timeout %s, mtu %d", data, c.policyTimeout, c.MTU)
	}
	if err := c.ds.Validate(); err != nil {
		t.Fatalf("accepted %q with an invalid datastore config: %v", data, err)
	}
	enc, err := json.Marshal(c)
	if err != nil {
		t.Fatalf("encode accepted %q: %v", data, err)
	}
	c2, err := parseConf(enc, fuzzHost)
	if err != nil {
		t.Fatalf("accepted %q, but not its encoding %q: %v", data, enc, err)
	}
	if c2.NodeName != c.NodeName || c2.BPFFSRoot != c.BPFFSRoot || c2.policyTimeout != c.policyTimeout ||
		c2.level != c.level || c2.MTU != c.MTU || !sameDatastore(c.ds, c2.ds) {
		t.Fatalf("round trip of %q through %q changed the settings:\n got %+v\nwant %+v", data, enc, c2, c)
	}
	enc2, err := json.Marshal(c2)
	if err != nil || string(enc2) != string(enc) {
		t.Fatalf("re-encoding changed the bytes: %q then %q (%v)", enc, enc2, err)
	}
}

// sameDatastore compares datastore configs, an empty endpoint list being the same as none.
func sameDatastore(a, b datastore.Config) bool {
	if len(a.Endpoints) == 0 && len(b.Endpoints) == 0 {
		a.Endpoints, b.Endpoints = nil, nil
	}
	return reflect.DeepEqual(a, b)
}

// checkArgs: CNI_ARGS either fail with code 4 or give pairs that print back to the same pairs.
func checkArgs(t *testing.T, s string) {
	t.Helper()
	m, err := parseCNIArgs(s)
	if err != nil {
		checkError(t, err, types.ErrInvalidEnvironmentVariables, "margay-cni: CNI_ARGS: ")
		return
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if k == "" || strings.ContainsAny(k, "=;") || strings.Contains(m[k], ";") {
			t.Fatalf("CNI_ARGS %q gave the pair %q=%q", s, k, m[k])
		}
		parts = append(parts, k+"="+m[k])
	}
	m2, err := parseCNIArgs(strings.Join(parts, ";"))
	if err != nil || !maps.Equal(m, m2) {
		t.Fatalf("CNI_ARGS %q: %v, printed and parsed again %v (%v)", s, m, m2, err)
	}
}

// fuzzSeeds are the shipped conflist's plugin config (as libcni hands it to the plugin) and the
// configs the tests use, good and bad.
func fuzzSeeds(f *testing.F) [][]byte {
	raw, err := os.ReadFile("../../deploy/cni/10-margay.conflist")
	if err != nil {
		f.Fatal(err)
	}
	var list struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		f.Fatal(err)
	}
	var seeds [][]byte
	add := func(v any) {
		b, err := json.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	for _, p := range list.Plugins {
		p["cniVersion"], p["name"] = list.CNIVersion, list.Name
		add(p)
	}
	for _, set := range []map[string]any{
		nil,
		{"mtu": 1400, "policySetupTimeout": "20s", "bpffsRoot": "/sys/fs/bpf/margay-test"},
		{"nodeName": nil, "logLevel": "WARNING", "logFile": "/var/log/margay/cni.log"},
		{"dns": map[string]any{"nameservers": []string{"198.18.0.53"}, "search": []string{"svc"}}},
		{"capabilities": map[string]bool{"portMappings": true}, "runtimeConfig": map[string]any{"portMappings": []any{}}},
		{"prevResult": map[string]any{"cniVersion": "1.0.0", "ips": []any{map[string]any{"address": "198.19.0.1/32"}}}},
		{"cni.dev/valid-attachments": []any{map[string]any{"containerID": "c1", "ifname": "eth0"}}},
		{"datastore": map[string]any{"endpoints": []string{"https://198.18.0.10:2379"}, "prefix": "/margay/v1/", "username": "u", "password": "p", "dialTimeout": "300ms"}},
		{"datastore": nil, "datastoreConfig": "/nonexistent/datastore.yaml"},
		{"mtuu": 1400},
		{"cniVersion": "0.3.1"},
		{"datastore": nil},
		{"datastore": map[string]any{"endpoints": []string{"etcd:2379"}}},
		{"datastore": map[string]any{"endpoint": "http://x:1"}},
		{"ipam": map[string]any{"type": "host-local"}},
		{"mtu": 10},
		{"logLevel": "loud"},
		{"policySetupTimeout": "soon"},
		{"bpffsRoot": "sys/fs/bpf"},
		{"nodeName": "Not_A_Name"},
		{"kubernetes": map[string]any{"kubeconfig": "/etc/margay/kubeconfig"}},
		{"kubernetes": map[string]any{"kubeconfig": "kubeconfig"}},
	} {
		seeds = append(seeds, testConf("http://127.0.0.1:2379", "1.0.0", set))
	}
	return append(seeds, []byte(`{"cniVersion": "1.0.0", "name": `), []byte(`{} {}`), []byte(`null`), []byte(`[]`))
}
