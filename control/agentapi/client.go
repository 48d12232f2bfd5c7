// Package agentapi is the client side of a margay-agent's HTTP API (its --http-addr): whether the
// agent runs, and the state of its BGP sessions, which margayctl node status prints. What the
// agent answers is hostconv's PeerStatus.
package agentapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/margaynet/margay/control/hostconv"
)

// DefaultAddr is where margayctl asks this host's agent, which serves on :9091 by default.
const DefaultAddr = "127.0.0.1:9091"

// The agent's endpoints.
const (
	PathHealthz  = "/healthz"   // 200 while the agent's owner loop turns
	PathReadyz   = "/readyz"    // 200 once the dataplane matched the datastore
	PathMetrics  = "/metrics"   // Prometheus
	PathBGPPeers = "/bgp/peers" // the sessions of the node's speaker, as []hostconv.PeerStatus; 503 without BGP
	PathPolicy   = "/policy"    // the policies (by datastore revision) the dataplane enforces
	// PathPolicyRules names the rules behind the rule ids of rule_hits and of policy log events,
	// as map[id]Rule.
	PathPolicyRules = "/policy/rules"
	PathPprof       = "/debug/pprof/"
)

// ErrBGPOff says that the agent runs without its BGP speaker (margay-agent without --bgp): remote
// routes come from the datastore, and there are no sessions to show.
var ErrBGPOff = errors.New("bgp is not running on this node")

// Client asks one agent.
type Client struct {
	base string
	http *http.Client
}

// New returns a client of the agent serving at addr (host:port); each request takes at most
// timeout.
func New(addr string, timeout time.Duration) *Client {
	return &Client{base: "http://" + addr, http: &http.Client{Timeout: timeout}}
}

func (c *Client) get(ctx context.Context, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	return c.http.Do(req)
}

// Healthy returns nil when the agent answers /healthz with 200 OK: it runs and its owner loop
// turns.
func (c *Client) Healthy(ctx context.Context) error {
	resp, err := c.get(ctx, PathHealthz)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// Rule names a policy rule (or a profile's): what a rule id of the dataplane stands for.
type Rule struct {
	Policy    string `json:"policy,omitempty"` // Policy.Key: <name> or <namespace>/<name>
	Profile   string `json:"profile,omitempty"`
	Direction string `json:"direction"` // ingress or egress
	Index     int    `json:"index"`
}

func (r Rule) String() string {
	if r.Profile != "" {
		return fmt.Sprintf("profile:%s/%s/%d", r.Profile, r.Direction, r.Index)
	}
	return fmt.Sprintf("%s/%s/%d", r.Policy, r.Direction, r.Index)
}

// PolicyRules returns the rules the agent's dataplane counts, by rule id (/policy/rules).
func (c *Client) PolicyRules(ctx context.Context) (map[uint32]Rule, error) {
	resp, err := c.get(ctx, PathPolicyRules)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	rules := map[uint32]Rule{}
	if err := json.Unmarshal(body, &rules); err != nil {
		return nil, fmt.Errorf("decode rules: %w", err)
	}
	return rules, nil
}

// BGPPeers returns the agent's BGP sessions (/bgp/peers), an empty list when it has none, and
// ErrBGPOff when the agent runs without BGP (503 Service Unavailable).
func (c *Client) BGPPeers(ctx context.Context) ([]hostconv.PeerStatus, error) {
	resp, err := c.get(ctx, PathBGPPeers)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusServiceUnavailable:
		return nil, ErrBGPOff
	default:
		return nil, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	peers := []hostconv.PeerStatus{}
	if err := json.Unmarshal(body, &peers); err != nil {
		return nil, fmt.Errorf("decode peers: %w", err)
	}
	return peers, nil
}
