package lab_test

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/margaynet/margay/tests/cluster"
	"github.com/margaynet/margay/tests/lab"
	"github.com/margaynet/margay/tests/netns"
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
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := cl.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		_ = srv.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		_, ap, err := srv.ReadFromUDPAddrPort(buf)
		if err == nil {
			from = ap
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no datagram from the outside client reached %s: %v", w.Name, err)
		}
	}
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
