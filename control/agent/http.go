package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/margaynet/margay/control/agentapi"
	"github.com/margaynet/margay/control/hostconv"
)

// serveHTTP serves health, readiness, metrics, the BGP sessions and the enforced policies on
// HTTPAddr (agentapi names the endpoints and is their client), until ctx ends. The handlers
// read what the loop publishes in atomics; none touches the loop's state.
func (a *Agent) serveHTTP(ctx context.Context) error {
	if a.cfg.HTTPAddr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", a.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("agent: listen on %s: %w", a.cfg.HTTPAddr, err)
	}
	a.httpLn = ln
	mux := http.NewServeMux()
	mux.Handle(agentapi.PathMetrics, promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{Registry: a.reg}))
	mux.HandleFunc(agentapi.PathHealthz, func(w http.ResponseWriter, _ *http.Request) {
		// Healthy while the owner loop turns: a pass never takes this long.
		if time.Since(time.Unix(0, a.healthy.Load())) > a.cfg.ReconcileInterval+time.Minute {
			http.Error(w, "owner loop stuck", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc(agentapi.PathBGPPeers, a.serveBGPPeers)
	mux.HandleFunc(agentapi.PathPolicy, a.servePolicy)
	mux.HandleFunc(agentapi.PathPolicyRules, a.servePolicyRules)
	if a.cfg.Pprof {
		mux.HandleFunc(agentapi.PathPprof, pprof.Index)
		mux.HandleFunc(agentapi.PathPprof+"cmdline", pprof.Cmdline)
		mux.HandleFunc(agentapi.PathPprof+"profile", pprof.Profile)
		mux.HandleFunc(agentapi.PathPprof+"symbol", pprof.Symbol)
		mux.HandleFunc(agentapi.PathPprof+"trace", pprof.Trace)
	}
	mux.HandleFunc(agentapi.PathReadyz, func(w http.ResponseWriter, _ *http.Request) {
		if !a.ready.Load() {
			http.Error(w, "not reconciled yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	return nil
}

// serveBGPPeers answers with the sessions of the node's speaker, as calicoctl reads BIRD's.
func (a *Agent) serveBGPPeers(w http.ResponseWriter, req *http.Request) {
	sp := a.bgp.speaker.Load()
	if sp == nil {
		http.Error(w, "bgp is not running on this node", http.StatusServiceUnavailable)
		return
	}
	peers, err := (*sp).Peers(req.Context())
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	out := []hostconv.PeerStatus{}
	for _, p := range peers {
		out = append(out, hostconv.PeerStatus{Address: p.Address.String(), Type: p.Type.String(), State: p.State.String(), Since: p.Since, Info: p.Info})
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// servePolicy answers which policies (by datastore revision) the dataplane enforces.
// servePolicyRules names the rule ids the dataplane counts and logs.
func (a *Agent) servePolicyRules(w http.ResponseWriter, _ *http.Request) {
	if a.pol == nil {
		http.Error(w, "not started", http.StatusServiceUnavailable)
		return
	}
	out := map[uint32]agentapi.Rule{}
	for id, r := range *a.pol.rules.Load() {
		out[id] = agentapi.Rule{Policy: r.Policy, Profile: r.Profile, Direction: r.Direction.String(), Index: r.Index}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

func (a *Agent) servePolicy(w http.ResponseWriter, _ *http.Request) {
	if a.pol == nil {
		http.Error(w, "not started", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(a.pol.status.Load())
}
