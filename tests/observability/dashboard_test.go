package observability

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/margaynet/margay/control/lab"
	"github.com/margaynet/margay/tests/cluster"
	"github.com/margaynet/margay/tests/netns"
	"github.com/margaynet/margay/tests/poll"
)

const (
	prometheusBin = "/usr/bin/prometheus"
	dashboardPath = "../../deploy/grafana/margay-dashboard.json"
	agentHTTP     = "127.0.0.1:9091" // where the lab's agents serve /metrics, each in its host's namespace
	rangeInterval = "1m"             // for $__rate_interval
	udpDeniedPort = 9999
)

// denyPolicy drops UDP to udpDeniedPort into every workload and allows the rest.
var denyPolicy = fmt.Sprintf(`name: obs-deny-udp
selector: all()
ingress:
  - action: deny
    protocol: udp
    destination:
      ports: [%d]
  - action: allow
`, udpDeniedPort)

// dashboard is the part of a Grafana dashboard the test reads.
type dashboard struct {
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string `json:"name"`
			Type       string `json:"type"`
			Query      any    `json:"query"`
			Definition string `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // of a collapsed row
}

// query is one expression of the dashboard, named for messages.
type query struct{ where, expr string }

func readDashboard(t *testing.T) (dashboard, []query) {
	t.Helper()
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	var qs []query
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %d %q has no queries", p.ID, p.Title)
			}
			if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
				t.Errorf("panel %d %q: datasource is not the dashboard's ${datasource} variable", p.ID, p.Title)
			}
			for _, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("panel %d %q target %s: empty expr", p.ID, p.Title, tg.RefID)
					continue
				}
				qs = append(qs, query{where: fmt.Sprintf("panel %q target %s", p.Title, tg.RefID), expr: tg.Expr})
			}
		}
	}
	walk(d.Panels)
	return d, qs
}

// The dashboard is well-formed on its own: panels with queries on the datasource variable, a
// datasource variable and a host variable.
func TestDashboardShape(t *testing.T) {
	d, qs := readDashboard(t)
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d, want a current Grafana's (39)", d.SchemaVersion)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["datasource"] != "datasource" || vars["host"] != "query" {
		t.Errorf("templating %v: want a datasource variable \"datasource\" and a query variable \"host\"", vars)
	}
	if len(qs) < 10 {
		t.Errorf("%d queries", len(qs))
	}
	for _, q := range qs {
		if !strings.Contains(q.expr, `instance=~"$host"`) {
			t.Errorf("%s does not filter by the host variable: %s", q.where, q.expr)
		}
	}
}

// A lab with BGP, traffic between workloads, a policy drop and CNI ADDs; a real Prometheus
// scraping its agents every second; every query of the dashboard returns series.
func TestDashboardQueriesReturnSeries(t *testing.T) {
	if _, err := os.Stat(prometheusBin); err != nil {
		t.Fatalf("%s is missing (%v): `make deps` installs Debian's prometheus package", prometheusBin, err)
	}
	d, queries := readDashboard(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// The lab: two hosts peering over BGP, a workload on each, created by the real margay-cni.
	var out bytes.Buffer
	cfg := lab.Config{Hosts: 2, BinDir: cluster.Binaries(t), StateDir: filepath.Join(t.TempDir(), "state"),
		Prefix: netns.UniqueName("o") + "-", BPFFS: filepath.Dir(netns.BPFFS(t)), Out: &out}
	t.Cleanup(func() {
		if err := lab.Down(cfg); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	l, err := lab.Up(ctx, cfg)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	start := time.Now()
	if err := l.Check(ctx); err != nil { // forwarding: FWD_REMOTE on the sender, FWD_LOCAL on the receiver
		t.Fatal(err)
	}

	// A policy drop: UDP to udpDeniedPort of the second workload, until its host counts it.
	policyFile := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(policyFile, []byte(denyPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := lab.In(cfg.Prefix+"margay-etcd", filepath.Join(cfg.BinDir, "margayctl"), "policy", "apply", "-f", policyFile,
		"--etcd-endpoints", "http://198.18.0.2:2379"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	relays := map[string]string{} // host name -> relay address in the test's namespace
	for _, h := range l.Hosts {
		relays[h.Name] = netns.Open(t, h.NS).RelayInto(t, agentHTTP)
	}
	// The UDP the policy denies makes the drops and the deny rule's hits; pings, which its allow
	// rule lets through, make the allow rule's.
	from, to := l.Workloads[0], l.Workloads[1]
	var lastMetrics string
	defer func() {
		if t.Failed() {
			t.Logf("agents' policy metrics:\n%s", lastMetrics)
		}
	}()
	policyCounted := func(name, labels string) func() bool {
		return func() bool {
			lastMetrics = ""
			found := false
			for host, r := range relays {
				body, err := get(ctx, "http://"+r+"/metrics")
				if err != nil {
					lastMetrics += host + ": " + err.Error() + "\n"
					continue
				}
				found = found || counted(body, name, labels)
				for _, line := range strings.Split(body, "\n") {
					if strings.Contains(line, "POLICY") || strings.HasPrefix(line, "margay_policy_rule_hits") {
						lastMetrics += host + ": " + line + "\n"
					}
				}
			}
			return found
		}
	}
	sendUDP(t, netns.Open(t, from.NS), netip.AddrPortFrom(to.IP, udpDeniedPort),
		policyCounted("margay_dataplane_packets_total", `reason="DROP_POLICY_`))
	if err := l.Check(ctx); err != nil {
		t.Fatalf("the policy's allow rule: %v", err)
	}
	if hits := policyCounted("margay_policy_rule_hits_packets_total", `policy="obs-deny-udp"`); !hits() {
		t.Fatal("no rule hits of policy obs-deny-udp after pings it allows")
	}
	t.Logf("lab traffic and policy drop in %v", time.Since(start).Round(time.Millisecond))

	// Prometheus in the test's namespace, scraping each agent through its relay, with the host's
	// name as instance (the dashboard's host variable).
	api := startPrometheus(t, relays)
	waitTargetsUp(ctx, t, api, len(relays))

	// The host variable's query, label_values(margay_agent_endpoints, instance).
	var hosts []string
	for _, v := range d.Templating.List {
		if v.Name == "host" && !strings.Contains(v.Definition, "label_values(margay_agent_endpoints, instance)") {
			t.Errorf("host variable %q: the test expects label_values(margay_agent_endpoints, instance)", v.Definition)
		}
	}
	if err := apiGet(ctx, api, "/api/v1/label/instance/values?"+url.Values{"match[]": {"margay_agent_endpoints"}}.Encode(), &hosts); err != nil {
		t.Fatal(err)
	}
	sort.Strings(hosts)
	if want := []string{l.Hosts[0].Name, l.Hosts[1].Name}; strings.Join(hosts, ",") != strings.Join(want, ",") {
		t.Fatalf("host variable values %v, want %v", hosts, want)
	}

	// Every query, with the variables as Grafana substitutes them ("All" hosts), until all
	// return series: rates need two scrapes in their range.
	subst := strings.NewReplacer("$__rate_interval", rangeInterval, "${__rate_interval}", rangeInterval,
		"$__interval", rangeInterval, "${host}", "("+strings.Join(hosts, "|")+")", "$host", "("+strings.Join(hosts, "|")+")")
	failures := map[string]string{}
	// A round of every query each second (Prometheus scrapes every second); what still fails
	// after 30 s is reported query by query below.
	_ = poll.Every(time.Second, 30*time.Second, func() error {
		clear(failures)
		for _, q := range queries {
			expr := subst.Replace(q.expr)
			if strings.Contains(expr, "$") {
				failures[q.where] = "unsubstituted variable in " + expr
				continue
			}
			var res struct {
				ResultType string            `json:"resultType"`
				Result     []json.RawMessage `json:"result"`
			}
			if err := apiGet(ctx, api, "/api/v1/query?"+url.Values{"query": {expr}}.Encode(), &res); err != nil {
				failures[q.where] = fmt.Sprintf("%s: %v", expr, err)
			} else if len(res.Result) == 0 {
				failures[q.where] = expr + ": no series"
			}
		}
		if len(failures) > 0 {
			return fmt.Errorf("%d queries fail", len(failures))
		}
		return nil
	})
	for where, why := range failures {
		t.Errorf("%s: %s", where, why)
	}
	t.Logf("%d queries of %d panels return series; %v from the lab's start", len(queries), len(d.Panels), time.Since(start).Round(time.Millisecond))
}

// sendUDP sends datagrams from ns to dst, one every 200 ms, until done reports the effect, or
// fails after 30 s.
func sendUDP(t *testing.T, ns *netns.NS, dst netip.AddrPort, done func() bool) {
	t.Helper()
	var c *net.UDPConn
	if err := ns.Do(func() (err error) { c, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(dst)); return err }); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	poll.UntilEvery(t, fmt.Sprintf("a policy drop of UDP to %v counted", dst), 200*time.Millisecond, 30*time.Second, func() error {
		_, _ = c.Write([]byte("denied by policy"))
		if !done() {
			return errors.New("none so far")
		}
		return nil
	})
}

// counted reports whether a sample of name whose labels contain labels is non-zero.
func counted(body, name, labels string) bool {
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, name+"{") && strings.Contains(line, labels) && !strings.HasSuffix(line, " 0") {
			return true
		}
	}
	return false
}

// startPrometheus runs Debian's Prometheus on a free loopback port with a 1 s scrape interval
// and returns its base URL; it is stopped and its storage removed at cleanup.
func startPrometheus(t *testing.T, targets map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	var conf strings.Builder
	conf.WriteString("global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: margay\n    static_configs:\n")
	names := make([]string, 0, len(targets))
	for name := range targets {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(&conf, "      - targets: [%q]\n        labels: {instance: %q}\n", targets[name], name)
	}
	confPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(confPath, []byte(conf.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	logf, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(prometheusBin, "--config.file="+confPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		_ = logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("prometheus log:\n%s", b)
		}
	})
	base := "http://" + addr
	poll.UntilEvery(t, "prometheus ready", 100*time.Millisecond, 20*time.Second, func() error {
		body, err := get(context.Background(), base+"/-/ready")
		if err == nil && strings.Contains(body, "Ready") {
			return nil
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("prometheus exited:\n%s", b)
		default:
		}
		return fmt.Errorf("/-/ready: %q, %v", body, err)
	})
	return base
}

// waitTargetsUp waits until Prometheus scraped all n targets successfully.
func waitTargetsUp(ctx context.Context, t *testing.T, api string, n int) {
	t.Helper()
	poll.UntilEvery(t, "prometheus targets all up", 250*time.Millisecond, 20*time.Second, func() error {
		var res struct {
			ActiveTargets []struct {
				Labels    map[string]string `json:"labels"`
				Health    string            `json:"health"`
				LastError string            `json:"lastError"`
			} `json:"activeTargets"`
		}
		if err := apiGet(ctx, api, "/api/v1/targets?state=active", &res); err != nil {
			return err
		}
		up := 0
		var states []string
		for _, tg := range res.ActiveTargets {
			if tg.Health == "up" {
				up++
			}
			states = append(states, fmt.Sprintf("%s %s %s", tg.Labels["instance"], tg.Health, tg.LastError))
		}
		if up == n && len(res.ActiveTargets) == n {
			return nil
		}
		return errors.New(strings.Join(states, "; "))
	})
}

// apiGet calls the Prometheus HTTP API and decodes the data of a successful answer into v.
func apiGet(ctx context.Context, base, path string, v any) error {
	body, err := get(ctx, base+path)
	var env struct {
		Status    string          `json:"status"`
		Data      json.RawMessage `json:"data"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
	}
	if jerr := json.Unmarshal([]byte(body), &env); jerr != nil {
		return errors.Join(err, fmt.Errorf("%s: %v: %.200s", path, jerr, body))
	}
	if env.Status != "success" {
		return fmt.Errorf("%s: %s: %s", env.Status, env.ErrorType, env.Error)
	}
	return json.Unmarshal(env.Data, v)
}

func get(ctx context.Context, u string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return string(b), err
}
