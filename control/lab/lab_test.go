package lab_test

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/margaynet/margay/control/lab"
	"github.com/margaynet/margay/tests/cluster"
	"github.com/margaynet/margay/tests/netns"
	"github.com/margaynet/margay/tests/poll"
)

// The lab comes up as make lab brings it up (here with two hosts and the gateway, under a prefix
// of its own so a running lab is not touched), every workload reaches every other and the outside
// client reaches every workload through the BIRD gateway, and Down leaves nothing.
func TestLabUpCheckDown(t *testing.T) {
	prefix := netns.UniqueName("t") + "-"
	var out bytes.Buffer
	// A private bpffs: the test leaves no mount behind.
	cfg := lab.Config{Hosts: 2, BinDir: cluster.Binaries(t), StateDir: filepath.Join(t.TempDir(), "state"), Prefix: prefix,
		BPFFS: filepath.Dir(netns.BPFFS(t)), Gateway: true, Out: &out}
	t.Cleanup(func() { _ = lab.Down(cfg) })
	l, err := lab.Up(context.Background(), cfg)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if err := l.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	var report bytes.Buffer
	l.Report(context.Background(), &report)
	for _, want := range []string{"Margay process is running.", "node-to-node mesh | up", "blackhole 198.19.0.",
		"REMOTE_BLOCK|IN_POOL", "FWD_REMOTE", "FWD_LOCAL", "| 198.18.0.1   | global"} {
		if !strings.Contains(report.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
	// "proto margay" once make deps named protocol 77 in /etc/iproute2/rt_protos.d, else the number.
	for _, want := range []string{`via 198\.18\.0\.101 dev ens32 proto (77|margay)`, `198\.18\.1\.0/24 via 198\.18\.0\.1 dev ens32 proto (77|margay)`} {
		if !regexp.MustCompile(want).MatchString(report.String()) {
			t.Errorf("report lacks %s", want)
		}
	}
	if !strings.Contains(report.String(), "\noutside ") {
		t.Errorf("ping matrix lacks the outside client's row")
	}
	if strings.Contains(report.String(), "FAIL") {
		t.Errorf("ping matrix has failures:\n%s", report.String())
	}
	t.Logf("report:\n%s", report.String())

	// No NAT: a workload sees the outside client's own address.
	w := l.Workloads[0]
	wns, outside := netns.Open(t, w.NS), netns.Open(t, cfg.OutsideNS())
	var srv *net.UDPConn
	if err := wns.Do(func() (err error) {
		srv, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(w.IP, 7777)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var cl *net.UDPConn
	if err := outside.Do(func() (err error) {
		cl, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(w.IP, 7777)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	buf := make([]byte, 64)
	var from netip.AddrPort
	// Each try waits for the datagram itself (300 ms): no pause between tries.
	poll.UntilEvery(t, "a datagram from the outside client reached "+w.Name, 0, 10*time.Second, func() (err error) {
		if _, err := cl.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		_ = srv.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		_, from, err = srv.ReadFromUDPAddrPort(buf)
		return err
	})
	if from.Addr() != netip.MustParseAddr(lab.OutsideAddr) {
		t.Errorf("%s saw the outside client as %v, want %s (no NAT)", w.Name, from.Addr(), lab.OutsideAddr)
	}

	if err := lab.Down(cfg); err != nil {
		t.Fatal(err)
	}
	nss, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(nss), prefix) {
		t.Errorf("namespaces left after Down:\n%s", nss)
	}
	if _, err := os.Stat(filepath.Join(cfg.BPFFS, prefix+"margay-lab")); !os.IsNotExist(err) {
		t.Errorf("pins left after Down: %v", err)
	}
	if _, err := os.Stat(cfg.StateDir); !os.IsNotExist(err) {
		t.Errorf("state left after Down: %v", err)
	}
	// Down of nothing is fine.
	if err := lab.Down(cfg); err != nil {
		t.Errorf("second Down: %v", err)
	}
}

// `margayctl lab up` runs as an operator starts it. From other processes, margayctl inside a lab
// host (run by `lab exec`) finds the lab's etcd, its node and its pins through the host's config
// file, and `margayctl lab down` stops the `lab up` process, which takes its lab down: nothing is
// left.
func TestLabExecAndDownFromAnotherShell(t *testing.T) {
	bin := cluster.Binaries(t)
	ctl := filepath.Join(bin, "margayctl")
	prefix := netns.UniqueName("t") + "-"
	cfg := lab.Config{BinDir: bin, StateDir: filepath.Join(t.TempDir(), "state"), Prefix: prefix, BPFFS: filepath.Dir(netns.BPFFS(t))}
	labArgs := []string{"lab", "--prefix", cfg.Prefix, "--state-dir", cfg.StateDir, "--bpffs", cfg.BPFFS}

	up := exec.Command(ctl, append(labArgs, "up", "--hosts", "1")...)
	stdout, err := up.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	up.Stderr = up.Stdout
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	t.Cleanup(func() { // after Down below; kills lab up only if Down could not stop it
		select {
		case <-exited:
		default:
			_ = up.Process.Kill()
			<-exited
		}
	})
	t.Cleanup(func() { _ = lab.Down(cfg) })
	var (
		mu     sync.Mutex
		output strings.Builder
	)
	ready := make(chan struct{})
	go func() {
		defer close(exited)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			mu.Lock()
			output.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if strings.Contains(sc.Text(), "The lab is up") {
				close(ready)
			}
		}
		_ = up.Wait()
	}()
	upOutput := func() string { mu.Lock(); defer mu.Unlock(); return output.String() }
	select {
	case <-ready:
	case <-exited:
		t.Fatalf("lab up exited before the lab was up:\n%s", upOutput())
	case <-time.After(3 * time.Minute):
		t.Fatalf("lab up: not up within 3m:\n%s", upOutput())
	}

	inHost := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(ctl, append(append(labArgs, "exec", "vm100", "--", "margayctl"), args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("lab exec vm100 -- margayctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		t.Logf("lab exec vm100 -- margayctl %s:\n%s", strings.Join(args, " "), out)
		return string(out)
	}
	if out := inHost("workload", "list"); !regexp.MustCompile(`vm100\s+w100\s+cali[0-9a-f]{11}\s+198\.19\.0\.0/32`).MatchString(out) {
		t.Errorf("workload list in vm100 lacks vm100's workload w100:\n%s", out)
	}
	if out := inHost("ipam", "show"); !regexp.MustCompile(`198\.19\.0\.0/26\s+vm100\s+1/64`).MatchString(out) {
		t.Errorf("ipam show in vm100 lacks vm100's block:\n%s", out)
	}
	if out := inHost("routes"); !strings.Contains(out, "LOCAL_WEP|IN_POOL") {
		t.Errorf("routes in vm100 (pins from the config file) lack the workload's route:\n%s", out)
	}
	want := "no workloads on this node: node nosuchnode (from --node); etcd http://198.18.0.2:2379; config " + cfg.HostConfig("vm100")
	if out := inHost("workload", "list", "--node", "nosuchnode"); !strings.Contains(out, want) {
		t.Errorf("empty workload list does not say %q:\n%s", want, out)
	}

	start := time.Now()
	out, err := exec.Command(ctl, append(labArgs, "down")...).CombinedOutput()
	t.Logf("lab down took %s:\n%s", time.Since(start).Round(time.Millisecond), out)
	if err != nil {
		t.Errorf("lab down: %v", err)
	}
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("lab up still runs 10s after lab down returned:\n%s", upOutput())
	}
	if !strings.Contains(upOutput(), "taking the lab down") {
		t.Errorf("lab up did not take its lab down:\n%s", upOutput())
	}
	nss, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(nss), prefix) {
		t.Errorf("namespaces left after lab down:\n%s", nss)
	}
	for _, p := range []string{filepath.Join(cfg.BPFFS, prefix+"margay-lab"), cfg.StateDir} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left after lab down: %v", p, err)
		}
	}
}
