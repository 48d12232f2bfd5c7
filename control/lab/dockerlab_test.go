package lab_test

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/margaynet/margay/control/lab"
	"github.com/margaynet/margay/tests/cluster"
	"github.com/margaynet/margay/tests/netns"
)

// The Docker lab comes up as `make lab LAB_FLAGS=--docker` brings it up (two hosts here, under a
// prefix and a state directory of its own): a dockerd and margay-docker per host, net1 and net2
// on both, the walkthrough's containers; Check passes (routes, same-network pings answer,
// cross-network pings do not); the report shows what the walkthrough shows; lab exec in a host
// reaches the host's dockerd; and Down, working from the state directory alone as after a crash
// of lab up, leaves no namespace, process, cgroup, pin or file.
func TestLabDocker(t *testing.T) {
	start := time.Now()
	bin := cluster.Binaries(t)
	t.Logf("binaries built in %s", time.Since(start).Round(time.Millisecond))
	prefix := netns.UniqueName("t") + "-"
	// Short: dockerd's containerd sockets live below <state dir>/<host> (108-byte limit).
	stateDir, err := os.MkdirTemp("", "mgl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(stateDir) })
	var out bytes.Buffer
	cfg := lab.Config{Hosts: 2, BinDir: bin, StateDir: stateDir, Prefix: prefix, BPFFS: filepath.Dir(netns.BPFFS(t)),
		Docker: true, Out: &out}
	t.Cleanup(func() { _ = lab.Down(cfg) })
	ctx := context.Background()
	l, err := lab.Up(ctx, cfg)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	t.Logf("up in %s:\n%s", time.Since(start).Round(time.Millisecond), out.String())
	if err := l.Check(ctx); err != nil {
		t.Fatalf("check: %v", err)
	}
	t.Logf("checked at %s", time.Since(start).Round(time.Millisecond))
	var report bytes.Buffer
	l.Report(ctx, &report)
	rep := report.String()
	t.Logf("report:\n%s", rep)
	// Which host claims which block depends on the order in which the agents start.
	a, b := l.Workloads[0], l.Workloads[1] // workload-A on vm100, workload-B on vm101
	if a.Name != "workload-A" || a.Host.Name != "vm100" || b.Name != "workload-B" || b.Host.Name != "vm101" {
		t.Fatalf("workloads: %+v", l.Workloads)
	}
	q := func(ip netip.Addr) string { return regexp.QuoteMeta(ip.String()) }
	block := func(ip netip.Addr) string { return regexp.QuoteMeta(netip.PrefixFrom(ip, 26).Masked().String()) }
	for _, want := range []string{
		`(?m)^\S+\s+net1\s+margay\s+local$`, `(?m)^\S+\s+net2\s+margay\s+local$`, // docker network ls
		`(?m)^blackhole ` + block(a.IP) + ` proto (margay|77)`, `(?m)^blackhole ` + block(b.IP) + ` proto (margay|77)`,
		`(?m)^` + q(a.IP) + ` dev cali[0-9a-f]{11} `, `(?m)^` + q(b.IP) + ` dev cali[0-9a-f]{11} `,
		`(?m)^` + block(b.IP) + ` via 198\.18\.0\.101 dev ens32 proto (margay|77)`,
		`(?m)^` + block(a.IP) + ` via 198\.18\.0\.100 dev ens32 proto (margay|77)`,
		`docker exec workload-A ip a\n(.*\n)*\d+: cali0@`, `inet ` + q(a.IP) + `/32 scope global cali0`,
		`default via 169\.254\.1\.1 dev cali0`,
	} {
		if !regexp.MustCompile(want).MatchString(rep) {
			t.Errorf("report lacks %s", want)
		}
	}
	// The ping matrix: rows "workload-X vm10N netN", then one cell per column.
	net := map[string]string{}
	for _, w := range l.Workloads {
		net[w.Name] = w.Network
	}
	rows := regexp.MustCompile(`(?m)^(workload-[A-E]) vm10[01] (net[12])\s+(.*)$`).FindAllStringSubmatch(rep, -1)
	if len(rows) != len(l.Workloads) || len(l.Workloads) != 5 {
		t.Fatalf("ping matrix has %d rows for %d workloads (want 5)", len(rows), len(l.Workloads))
	}
	count := map[string]int{}
	for _, r := range rows {
		cells := strings.Fields(r[3])
		if len(cells) != len(l.Workloads) {
			t.Fatalf("row %s has %d cells: %q", r[1], len(cells), r[3])
		}
		for j, c := range cells {
			to := l.Workloads[j]
			want := "blocked"
			switch {
			case to.Name == r[1]:
				want = "-"
			case net[r[1]] == to.Network:
				want = "ok"
			}
			if c != want {
				t.Errorf("ping %s → %s: %s, want %s", r[1], to.Name, c, want)
			}
			count[c]++
		}
	}
	// net1: A, B, C; net2: D, E.
	if count["ok"] != 8 || count["blocked"] != 12 {
		t.Errorf("ping matrix: %d ok (want 8), %d blocked (want 12)", count["ok"], count["blocked"])
	}

	// lab exec: docker in a host is the host's dockerd, and its containers reach each other.
	inHost := func(args ...string) string {
		t.Helper()
		cmd := cfg.Command(bin, "vm100", args...)
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("lab exec vm100 -- %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		return string(b)
	}
	if ps := inHost("docker", "ps", "--format", "{{.Names}}"); !regexp.MustCompile(`(?m)^workload-A$`).MatchString(ps) ||
		strings.Contains(ps, "workload-B") {
		t.Errorf("lab exec vm100 -- docker ps: want vm100's containers (workload-A, not workload-B):\n%s", ps)
	}
	// In the host's mount namespace, the caller's directory stays the working directory.
	if wd, _ := os.Getwd(); strings.TrimSpace(inHost("pwd")) != wd {
		t.Errorf("lab exec vm100 -- pwd: not %s", wd)
	}
	if p := inHost("docker", "exec", "workload-A", "ping", "-c", "1", "-W", "2", b.IP.String()); !strings.Contains(p, "1 packets received") {
		t.Errorf("lab exec vm100 -- docker exec workload-A ping %s:\n%s", b.IP, p)
	}

	// What Down must remove: the hosts' processes (found by their pid files and by the state
	// directory in their command lines: dockerd, containerd, its shims, margay-docker).
	var pids []int
	for _, h := range l.DockerHosts {
		for _, f := range []string{"mntns.pid", "dockerd.pid", "margay-docker.pid"} {
			b, err := os.ReadFile(filepath.Join(h.Dir, f))
			if err != nil {
				t.Fatalf("%s: %v", h.Name, err)
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				t.Fatal(err)
			}
			pids = append(pids, pid)
		}
	}
	// Each check after Down must see what it looks for now, or it could not fail.
	if len(processesWith(stateDir)) < 4 {
		t.Fatalf("processes naming %s: %v; want at least dockerd, containerd and margay-docker", stateDir, processesWith(stateDir))
	}
	for _, pid := range pids {
		if !alive(pid) {
			t.Fatalf("process %d of a pid file is not running before Down", pid)
		}
	}
	for _, h := range l.DockerHosts {
		if m, _ := filepath.Glob("/sys/fs/cgroup/*/" + h.CgroupParent); len(m) == 0 {
			t.Fatalf("no cgroup %s before Down", h.CgroupParent)
		}
	}
	downStart := time.Now()
	if err := lab.Down(lab.Config{BinDir: bin, StateDir: stateDir, Prefix: prefix, BPFFS: cfg.BPFFS}); err != nil {
		t.Fatal(err)
	}
	t.Logf("down in %s (total %s)", time.Since(downStart).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	nss, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(nss), prefix) {
		t.Errorf("namespaces left after Down:\n%s", nss)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("process %d (a pid file's) left after Down", pid)
		}
	}
	if left := processesWith(stateDir); len(left) > 0 {
		t.Errorf("processes naming %s left after Down: %v", stateDir, left)
	}
	for _, h := range l.DockerHosts {
		if m, _ := filepath.Glob("/sys/fs/cgroup/*/" + h.CgroupParent); len(m) > 0 {
			t.Errorf("cgroups left after Down: %v", m)
		}
		if !strings.HasPrefix(h.CgroupParent, prefix) {
			t.Errorf("%s's cgroup parent %s is not the lab's own", h.Name, h.CgroupParent)
		}
	}
	for _, p := range []string{filepath.Join(cfg.BPFFS, prefix+"margay-lab"), stateDir} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left after Down: %v", p, err)
		}
	}
}

// processesWith lists the processes whose command line contains s, as "pid: command line".
func processesWith(s string) []string {
	var found []string
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil || !bytes.Contains(b, []byte(s)) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(d)); err == nil && pid != os.Getpid() && alive(pid) {
			found = append(found, filepath.Base(d)+": "+strings.ReplaceAll(string(bytes.TrimRight(b, "\x00")), "\x00", " "))
		}
	}
	return found
}

// alive says whether process pid exists and is no zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || len(s) <= i+2 || s[i+2] != 'Z'
}
