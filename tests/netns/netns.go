package netns

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/control/hostconv"
)

// NS is a named network namespace that lives as long as the test.
type NS struct {
	Name   string
	Path   string
	handle vnetns.NsHandle
	nl     *netlink.Handle
}

// UniqueName returns prefix plus a random suffix, so parallel test packages never collide.
func UniqueName(prefix string) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

var sharedRunNetns sync.Once

// makeRunNetnsShared does what `ip netns add` does the first time: make /var/run/netns a shared
// mount of its own. Otherwise a later `ip netns add` anywhere on the machine mounts it over
// itself, hides the namespace mounts made before, and they can no longer be removed.
func makeRunNetnsShared() error {
	const dir = "/var/run/netns"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, ""); err == nil {
		return nil
	}
	if err := unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mount %s: %w", dir, err)
	}
	return unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
}

// create makes a named namespace, without entering it, and returns its name and a handle on it.
func create(tb testing.TB, prefix string) (string, vnetns.NsHandle) {
	tb.Helper()
	var err error
	sharedRunNetns.Do(func() { err = makeRunNetnsShared() })
	if err != nil {
		tb.Fatalf("prepare /var/run/netns: %v", err)
	}
	name := UniqueName(prefix)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := vnetns.Get()
	if err != nil {
		tb.Fatalf("get current netns: %v", err)
	}
	defer orig.Close()
	h, err := vnetns.NewNamed(name) // switches this thread into it
	if err != nil {
		tb.Fatalf("create netns %s: %v", name, err)
	}
	if err := vnetns.Set(orig); err != nil {
		tb.Fatalf("return to original netns: %v", err)
	}
	return name, h
}

// New creates a network namespace named prefix+random, with lo up, and deletes it at cleanup.
func New(tb testing.TB, prefix string) *NS {
	tb.Helper()
	name, h := create(tb, prefix)
	ns := &NS{Name: name, Path: filepath.Join("/var/run/netns", name), handle: h}
	tb.Cleanup(func() { ns.remove() })
	var err error
	ns.nl, err = netlink.NewHandleAt(h)
	if err != nil {
		tb.Fatalf("netlink handle in %s: %v", name, err)
	}
	lo, err := ns.nl.LinkByName("lo")
	if err == nil {
		err = ns.nl.LinkSetUp(lo)
	}
	if err != nil {
		tb.Fatalf("set lo up in %s: %v", name, err)
	}
	return ns
}

func (n *NS) remove() {
	if n.nl != nil {
		n.nl.Close()
	}
	n.handle.Close()
	_ = vnetns.DeleteNamed(n.Name)
}

// Delete removes the namespace with `ip netns del`, as a runtime that tears a container down
// without CNI DEL would: the handles this package holds on it are closed first, so that nothing
// keeps it alive and the kernel destroys it with its interfaces. Netlink and Do must not be used
// afterwards.
func (n *NS) Delete(tb testing.TB) {
	tb.Helper()
	if n.nl != nil {
		n.nl.Close()
		n.nl = nil
	}
	n.handle.Close()
	if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
		tb.Fatalf("ip netns del %s: %v: %s", n.Name, err, out)
	}
}

// Netlink is a netlink handle working inside the namespace.
func (n *NS) Netlink() *netlink.Handle { return n.nl }

// Handle is the namespace's file handle.
func (n *NS) Handle() vnetns.NsHandle { return n.handle }

// Do runs fn on an OS thread switched into the namespace. Sockets fn creates stay in the
// namespace after Do returns.
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is discarded when the goroutine ends locked, so a failed switch back can
		// never leak the namespace into other goroutines.
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := vnetns.Set(n.handle); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", n.Name, err)
			return
		}
		err = fn()
		if serr := vnetns.Set(orig); serr == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// Command prepares a command that runs inside the namespace. nsenter keeps the mount namespace,
// so /sys/fs/bpf stays visible (ip netns exec would remount /sys).
func (n *NS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + n.Path, "--", name}, args...)...)
}

// Run runs a command inside the namespace and returns its combined output.
func (n *NS) Run(name string, args ...string) (string, error) {
	out, err := n.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), n.Name, err, out)
	}
	return string(out), nil
}

// MustRun is Run that fails the test on error.
func (n *NS) MustRun(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := n.Run(name, args...)
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// Sysctl sets a value under /proc/sys/net in the namespace, e.g. "ipv4/ip_forward" (written
// only when it differs, as the agent and the CNI plugin set theirs).
func (n *NS) Sysctl(key, value string) error {
	return n.Do(func() error {
		_, err := hostconv.SetSysctl(hostconv.SysctlRoot, key, value)
		return err
	})
}

// MustSysctl is Sysctl, failing the test on error.
func (n *NS) MustSysctl(tb testing.TB, key, value string) {
	tb.Helper()
	if err := n.Sysctl(key, value); err != nil {
		tb.Fatalf("sysctl %s=%s in %s: %v", key, value, n.Name, err)
	}
}

// IPTablesRestore loads an iptables-restore input in the namespace (whichever iptables backend
// the host has), failing the test on error.
func (n *NS) IPTablesRestore(tb testing.TB, rules string) {
	tb.Helper()
	cmd := n.Command("iptables-restore")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("iptables-restore in %s: %v: %s", n.Name, err, out)
	}
}

// NetStat reads one counter of the namespace's /proc/net/snmp or /proc/net/netstat (file "snmp"
// or "netstat"), e.g. ("snmp", "Ip", "ForwDatagrams").
func (n *NS) NetStat(file, group, field string) (v uint64, err error) {
	err = n.Do(func() error {
		// /proc/net follows the process's main thread; thread-self follows this locked thread.
		b, err := os.ReadFile(filepath.Join("/proc/thread-self/net", file))
		if err != nil {
			return err
		}
		v, err = ParseNetStat(b, group, field)
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		return nil
	})
	if err != nil {
		err = fmt.Errorf("%s in %s: %w", file, n.Name, err)
	}
	return v, err
}

// ParseNetStat finds one counter in the text of /proc/net/snmp or /proc/net/netstat. Both files
// hold, per group, a header line of names and a line of values, each starting with "<group>:".
func ParseNetStat(b []byte, group, field string) (uint64, error) {
	lines := strings.Split(string(b), "\n")
	for i := 0; i+1 < len(lines); i++ {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) == 0 || names[0] != group+":" || len(values) != len(names) || values[0] != group+":" {
			continue
		}
		for j, name := range names {
			if name == field {
				return strconv.ParseUint(values[j], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no %s %s", group, field)
}

// Link returns the namespace's interface by name.
func (n *NS) Link(tb testing.TB, name string) netlink.Link {
	tb.Helper()
	l, err := n.nl.LinkByName(name)
	if err != nil {
		tb.Fatalf("link %s in %s: %v", name, n.Name, err)
	}
	return l
}

// Veth creates a veth pair with aName in a and bName in b, both up. Deleting the namespaces
// deletes the pair.
func Veth(tb testing.TB, a *NS, aName string, b *NS, bName string) (netlink.Link, netlink.Link) {
	tb.Helper()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: aName},
		PeerName:      bName,
		PeerNamespace: netlink.NsFd(int(b.handle)),
	}
	if err := a.nl.LinkAdd(veth); err != nil {
		tb.Fatalf("add veth %s/%s: %v", aName, bName, err)
	}
	la, lb := a.Link(tb, aName), b.Link(tb, bName)
	if err := a.nl.LinkSetUp(la); err != nil {
		tb.Fatalf("set %s up: %v", aName, err)
	}
	if err := b.nl.LinkSetUp(lb); err != nil {
		tb.Fatalf("set %s up: %v", bName, err)
	}
	return a.Link(tb, aName), b.Link(tb, bName)
}

// SetMAC sets an interface's hardware address.
func (n *NS) SetMAC(tb testing.TB, ifname string, mac string) {
	tb.Helper()
	hw, err := net.ParseMAC(mac)
	if err != nil {
		tb.Fatal(err)
	}
	if err := n.nl.LinkSetHardwareAddr(n.Link(tb, ifname), hw); err != nil {
		tb.Fatalf("set MAC of %s: %v", ifname, err)
	}
}

// AddAddr adds an address in CIDR form to an interface.
func (n *NS) AddAddr(tb testing.TB, ifname, cidr string) {
	tb.Helper()
	addr, err := netlink.ParseAddr(cidr)
	if err != nil {
		tb.Fatal(err)
	}
	if err := n.nl.AddrAdd(n.Link(tb, ifname), addr); err != nil {
		tb.Fatalf("add %s to %s: %v", cidr, ifname, err)
	}
}

// BPFFS mounts a private bpf filesystem for one test and unmounts it at cleanup; the returned
// root is a directory inside it, as the agent's --bpffs-root would be.
func BPFFS(tb testing.TB) string {
	tb.Helper()
	dir := tb.TempDir()
	if err := unix.Mount("bpffs", dir, "bpf", 0, "mode=0700"); err != nil {
		tb.Fatalf("mount bpffs: %v", err)
	}
	tb.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return filepath.Join(dir, "margay")
}

// Detached creates a named namespace that this process holds no handle on, as a container
// runtime leaves it: removing its name (the returned func, also run at cleanup) destroys it. It
// returns the namespace's path.
func Detached(tb testing.TB, prefix string) (path string, remove func()) {
	tb.Helper()
	name, h := create(tb, prefix)
	h.Close()
	remove = func() { _ = vnetns.DeleteNamed(name) }
	tb.Cleanup(remove)
	return filepath.Join("/var/run/netns", name), remove
}

// Open wraps an existing named namespace (one a lab or another tool created) for Do and Run. It
// is not removed at cleanup; only the handle is closed.
func Open(tb testing.TB, name string) *NS {
	tb.Helper()
	h, err := vnetns.GetFromName(name)
	if err != nil {
		tb.Fatalf("open netns %s: %v", name, err)
	}
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		h.Close()
		tb.Fatalf("netlink handle in %s: %v", name, err)
	}
	ns := &NS{Name: name, Path: filepath.Join("/var/run/netns", name), handle: h, nl: nl}
	tb.Cleanup(func() { nl.Close(); h.Close() })
	return ns
}

// AssertLinkGone fails the test unless the namespace has no interface named name and no route
// through one: what deleting a veth must leave.
func (n *NS) AssertLinkGone(tb testing.TB, name string) {
	tb.Helper()
	if _, err := n.nl.LinkByName(name); err == nil {
		tb.Errorf("interface %s still exists in %s", name, n.Name)
	}
	routes, err := n.nl.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		tb.Fatal(err)
	}
	for _, r := range routes {
		if l, err := n.nl.LinkByIndex(r.LinkIndex); err == nil && l.Attrs().Name == name {
			tb.Errorf("route %s dev %s still exists in %s", r.Dst, name, n.Name)
		}
	}
}
