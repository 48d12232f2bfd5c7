package agentapi_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/margaynet/margay/control/agentapi"
	"github.com/margaynet/margay/control/hostconv"
)

// agent serves /healthz and /bgp/peers with the given status codes and peers body, as
// margay-agent does.
func agent(t *testing.T, health, peers int, body string) *agentapi.Client {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if health != http.StatusOK {
			http.Error(w, "owner loop stuck", health)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/bgp/peers", func(w http.ResponseWriter, _ *http.Request) {
		if peers != http.StatusOK {
			http.Error(w, body, peers)
			return
		}
		_, _ = w.Write([]byte(body))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return agentapi.New(strings.TrimPrefix(srv.URL, "http://"), 5*time.Second)
}

func TestHealthy(t *testing.T) {
	if err := agent(t, http.StatusOK, http.StatusOK, "[]").Healthy(t.Context()); err != nil {
		t.Errorf("Healthy of a healthy agent: %v", err)
	}
	if err := agent(t, http.StatusServiceUnavailable, http.StatusOK, "[]").Healthy(t.Context()); err == nil ||
		!strings.Contains(err.Error(), "503 Service Unavailable: owner loop stuck") {
		t.Errorf("Healthy of a stuck agent: %v", err)
	}
	srv := httptest.NewServer(http.NotFoundHandler())
	addr := strings.TrimPrefix(srv.URL, "http://")
	srv.Close()
	if err := agentapi.New(addr, time.Second).Healthy(t.Context()); err == nil {
		t.Error("Healthy with no agent listening succeeded")
	}
}

func TestBGPPeers(t *testing.T) {
	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	want := []hostconv.PeerStatus{
		{Address: "198.18.0.101", Type: "node-to-node mesh", State: "Established", Since: since},
		{Address: "198.18.0.1", Type: "global", State: "Active", Info: "connect: connection refused"},
	}
	body, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	got, err := agent(t, http.StatusOK, http.StatusOK, string(body)).BGPPeers(t.Context())
	if err != nil || !slices.EqualFunc(got, want, func(a, b hostconv.PeerStatus) bool {
		return a.Address == b.Address && a.Type == b.Type && a.State == b.State && a.Since.Equal(b.Since) && a.Info == b.Info
	}) {
		t.Errorf("BGPPeers = %+v, %v; want %+v", got, err, want)
	}

	if got, err := agent(t, http.StatusOK, http.StatusOK, "[]\n").BGPPeers(t.Context()); err != nil || got == nil || len(got) != 0 {
		t.Errorf("BGPPeers of an agent without peers = %#v, %v; want an empty list", got, err)
	}
	if _, err := agent(t, http.StatusOK, http.StatusServiceUnavailable, "bgp is not running on this node").BGPPeers(t.Context()); !errors.Is(err, agentapi.ErrBGPOff) {
		t.Errorf("BGPPeers of an agent without BGP: %v; want ErrBGPOff", err)
	}
	if _, err := agent(t, http.StatusOK, http.StatusInternalServerError, "speaker: boom").BGPPeers(t.Context()); err == nil ||
		err.Error() != "500 Internal Server Error: speaker: boom" {
		t.Errorf("BGPPeers of a failing speaker: %v", err)
	}
	if _, err := agent(t, http.StatusOK, http.StatusOK, "{").BGPPeers(t.Context()); err == nil || !strings.HasPrefix(err.Error(), "decode peers: ") {
		t.Errorf("BGPPeers of a malformed answer: %v", err)
	}
}
