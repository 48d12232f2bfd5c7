package docker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/margaynet/margay/control/docker"
)

// testBadInput: requests dockerd would never send, against the real binary's socket, are answered
// with a non-200 status and {"Err": ...} and write nothing; docker run with etcd down fails with
// a clear error and leaves nothing once etcd is back, when a run works again; a full subnet
// refuses the next container with the plugin's message and leaves nothing of it.
func testBadInput(t *testing.T, e *env) {
	t.Run("Socket", func(t *testing.T) { badRequests(t, e) })
	t.Run("EtcdDown", func(t *testing.T) { etcdDown(t, e) })
	t.Run("Exhausted", func(t *testing.T) { exhausted(t, e) })
}

func badRequests(t *testing.T, e *env) {
	h := e.hosts[0]
	sock := filepath.Join(h.d.PluginDir(), "margay.sock")
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}
	nid, eid := strings.Repeat("ab", 32), strings.Repeat("cd", 32)
	before := e.etcdKeys(t)
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		err                      string // in Err
	}{
		{"malformed JSON", http.MethodPost, "/NetworkDriver.CreateEndpoint", `{"NetworkID": "` + nid + `", "EndpointID": `,
			http.StatusBadRequest, "malformed request body"},
		{"wrong type", http.MethodPost, "/IpamDriver.RequestAddress", `{"PoolID": 7}`, http.StatusBadRequest, "malformed request body"},
		{"data after the value", http.MethodPost, "/IpamDriver.RequestPool", `{"AddressSpace": "MargayLocal"} {}`,
			http.StatusBadRequest, "data after the JSON value"},
		{"unknown path", http.MethodPost, "/NetworkDriver.Frobnicate", `{}`, http.StatusNotFound, "no such call"},
		{"GET", http.MethodGet, "/Plugin.Activate", ``, http.StatusMethodNotAllowed, "takes POST only"},
		{"unknown endpoint: Join", http.MethodPost, "/NetworkDriver.Join",
			`{"NetworkID": "` + nid + `", "EndpointID": "` + eid + `", "SandboxKey": "/var/run/docker/netns/0123456789ab"}`,
			http.StatusInternalServerError, "endpoint " + eid + " not found on node vm100"},
		{"unknown endpoint: ProgramExternalConnectivity", http.MethodPost, "/NetworkDriver.ProgramExternalConnectivity",
			`{"NetworkID": "` + nid + `", "EndpointID": "` + eid + `"}`, http.StatusInternalServerError, "not found"},
		{"unknown endpoint: CreateEndpoint of an address not given out", http.MethodPost, "/NetworkDriver.CreateEndpoint",
			`{"NetworkID": "` + nid + `", "EndpointID": "` + eid + `", "Interface": {"Address": "198.19.99.1/32"}}`,
			http.StatusInternalServerError, "198.19.99.1 was not given out by margay-ipam"},
		{"foreign pool ID", http.MethodPost, "/IpamDriver.RequestAddress", `{"PoolID": "default-pool"}`,
			http.StatusBadRequest, "is not one of margay-ipam's"},
		{"no EndpointID", http.MethodPost, "/NetworkDriver.Leave", `{"NetworkID": "` + nid + `"}`, http.StatusBadRequest, "no EndpointID"},
	} {
		req, err := http.NewRequestWithContext(t.Context(), tc.method, "http://plugin"+tc.path, strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var ans struct{ Err string }
		jerr := json.Unmarshal(body, &ans)
		if resp.StatusCode != tc.status || jerr != nil || !strings.Contains(ans.Err, tc.err) ||
			resp.Header.Get("Content-Type") != docker.ContentType {
			t.Errorf("%s: %s %s: %d %s %q, want %d with an Err holding %q", tc.name, tc.method, tc.path,
				resp.StatusCode, resp.Header.Get("Content-Type"), body, tc.status, tc.err)
		}
	}
	if after := e.etcdKeys(t); !slices.Equal(before, after) {
		t.Errorf("the bad requests wrote to etcd:\nbefore %v\nafter  %v", before, after)
	}
	e.assertState(t)
}

// etcdKeys lists every key of Margay's data with its revision.
func (e *env) etcdKeys(t *testing.T) []string {
	t.Helper()
	resp, err := e.c.DS.Raw().Get(t.Context(), e.c.DS.Prefix(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range resp.Kvs {
		keys = append(keys, fmt.Sprintf("%s@%d", kv.Key, kv.ModRevision))
	}
	return keys
}

func etcdDown(t *testing.T, e *env) {
	h0, h1 := e.hosts[0], e.hosts[1]
	createNetwork(t, e.hosts[:2], "", "nbad")
	p := h1.run(t, "bad-peer", "nbad")
	e.assertState(t, p)

	e.stopEtcd(t)
	start := time.Now()
	_, err := h0.tryRun(t, "", "bad-down", "nbad")
	t.Logf("docker run with etcd down failed in %s: %v", time.Since(start).Round(time.Millisecond), err)
	want := "margay-docker gave up after " + callTimeout.String() + ", its --call-timeout: is etcd up and reachable from this host?"
	if err == nil || !strings.Contains(err.Error(), want) || time.Since(start) > callTimeout+20*time.Second {
		t.Errorf("docker run with etcd down: %v after %s, want %q within about %s", err, time.Since(start), want, callTimeout)
	}
	e.startEtcd()
	e.assertState(t, p)

	c := h0.run(t, "bad-up", "nbad")
	e.assertState(t, p, c)
	reach{p: {c.ip(t)}}.mustReach(t)
	h0.mustDocker(t, "rm", "-f", c.name, "bad-down")
	h1.mustDocker(t, "rm", "-f", p.name)
	e.assertState(t)
	for _, h := range e.hosts[:2] {
		h.mustDocker(t, "network", "rm", "nbad")
	}
	e.assertState(t)
}

func exhausted(t *testing.T, e *env) {
	h := e.hosts[0]
	const subnet = "198.19.250.0/30"
	createNetwork(t, e.hosts[:1], "", "nfull", "--subnet", subnet)
	var running []ctr
	var err error
	for i := range 6 {
		var c ctr
		if c, err = h.tryRun(t, "", fmt.Sprintf("full-%d", i), "nfull"); err != nil {
			break
		}
		running = append(running, c)
	}
	t.Logf("%d containers in %s", len(running), subnet)
	if len(running) == 0 || err == nil || !strings.Contains(err.Error(), "no free address in the network's subnet "+subnet) {
		t.Fatalf("docker run in a full subnet (after %d containers): %v, want the plugin's \"no free address in the network's subnet %s\"",
			len(running), err, subnet)
	}
	e.assertState(t, running...)
	for _, c := range running {
		h.mustDocker(t, "rm", "-f", c.name)
	}
	e.assertState(t)
	h.mustDocker(t, "network", "rm", "nfull")
	e.assertState(t)
}
