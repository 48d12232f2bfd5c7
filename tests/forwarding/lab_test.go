package forwarding_test

import (
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/netns"
)

// The Calico picture, in the RFC 2544 range: two hosts on one segment, each owning a /26.
const (
	uplink      = "ens32"
	hostVethMAC = "ee:ee:ee:ee:ee:ee" // every host-side cali* veth, as in Calico
	gateway     = "169.254.1.1"       // what workloads route through; nobody holds it
)

// host is a namespace acting as one Calico host with its own dataplane.
type host struct {
	name        string
	ns          *netns.NS
	addr        netip.Addr   // on the uplink
	block       netip.Prefix // the IPAM block it owns
	mode        loader.TCMode
	d           *loader.Dataplane
	maps        *maps.Set
	uplinkIndex uint32
	workloads   []*workload
}

// workload is a namespace with eth0 holding a /32, behind a cali* veth on its host.
type workload struct {
	name      string
	ns        *netns.NS
	host      *host
	ip        netip.Addr
	cali      string
	caliIndex uint32
	mac       net.HardwareAddr // of eth0 inside the workload
}

type lab struct {
	h1, h2      *host
	w1, w1b, w2 *workload
}

// newLab builds both hosts and three workloads, fills kernel routes and maps as the agent would,
// and attaches the programs. Everything goes away with the namespaces and bpffs mounts.
func newLab(tb testing.TB, mode loader.TCMode) *lab {
	tb.Helper()
	h1 := newHost(tb, mode, "h1", "198.18.0.1", "198.19.0.0/26")
	h2 := newHost(tb, mode, "h2", "198.18.0.2", "198.19.0.64/26")
	netns.Veth(tb, h1.ns, uplink, h2.ns, uplink)
	h1.connect(tb, h2)
	h2.connect(tb, h1)

	l := &lab{h1: h1, h2: h2}
	l.w1 = h1.addWorkload(tb, "w1", "198.19.0.1")
	l.w1b = h1.addWorkload(tb, "w1b", "198.19.0.2")
	l.w2 = h2.addWorkload(tb, "w2", "198.19.0.65")
	h1.attach(tb)
	h2.attach(tb)
	return l
}

func newHost(tb testing.TB, mode loader.TCMode, name, addr, block string) *host {
	tb.Helper()
	h := &host{
		name:  name,
		ns:    netns.New(tb, "mgyfw-"+name+"-"),
		addr:  netip.MustParseAddr(addr),
		block: netip.MustParsePrefix(block),
		mode:  mode,
	}
	h.ns.MustSysctl(tb, "ipv4/ip_forward", "1")

	root := netns.BPFFS(tb)
	// Loader logs go to the test's output: shown with -v or when the test fails.
	log := slog.New(slog.NewTextHandler(tb.Output(), nil)).With("host", name)
	d, err := loader.Load(loader.WithRoot(root), loader.WithTCMode(mode), loader.WithLogger(log))
	if err != nil {
		tb.Fatalf("%s: %v", name, err)
	}
	// Runs before the bpffs unmount and namespace removal registered above (cleanups are LIFO),
	// so it also proves that an operator's cleanup leaves nothing behind.
	tb.Cleanup(func() {
		d.Close()
		if err := h.ns.Do(func() error { return loader.Cleanup(root, log) }); err != nil {
			tb.Errorf("%s: cleanup: %v", name, err)
		}
	})
	h.d = d
	h.maps = maps.FromDataplane(d)
	return h
}

// connect gives h its uplink address and everything it needs to reach other's block: the kernel
// route BGP would install and the REMOTE_BLOCK route of the dataplane.
func (h *host) connect(tb testing.TB, other *host) {
	tb.Helper()
	h.ns.AddAddr(tb, uplink, netip.PrefixFrom(h.addr, 24).String())
	h.uplinkIndex = uint32(h.ns.Link(tb, uplink).Attrs().Index)
	h.ns.Blackhole(tb, h.block.String())
	h.ns.RouteVia(tb, other.block.String(), other.addr.String(), uplink)
	h.putRoute(tb, maps.Route{Prefix: h.block, Flags: maps.LocalBlock | maps.InPool})
	h.putRoute(tb, maps.Route{Prefix: other.block, Flags: maps.RemoteBlock | maps.InPool,
		Ifindex: h.uplinkIndex, NextHop: other.addr})
}

// addWorkload does what the CNI plugin and the agent do for a new workload.
func (h *host) addWorkload(tb testing.TB, name, ip string) *workload {
	tb.Helper()
	sum := sha1.Sum([]byte(name))
	w := &workload{
		name: name,
		ns:   netns.New(tb, "mgyfw-"+name+"-"),
		host: h,
		ip:   netip.MustParseAddr(ip),
		cali: "cali" + hex.EncodeToString(sum[:])[:11],
	}
	if !h.block.Contains(w.ip) {
		tb.Fatalf("workload %s %v outside the block %v of %s", name, w.ip, h.block, h.name)
	}
	netns.Veth(tb, h.ns, w.cali, w.ns, "eth0")

	w.ns.AddAddr(tb, "eth0", netip.PrefixFrom(w.ip, 32).String())
	w.ns.RouteDev(tb, gateway+"/32", "eth0")
	w.ns.RouteVia(tb, "default", gateway, "eth0")
	w.ns.PermanentNeigh(tb, "eth0", gateway, hostVethMAC)
	w.mac = w.ns.Link(tb, "eth0").Attrs().HardwareAddr

	h.ns.SetMAC(tb, w.cali, hostVethMAC)
	h.ns.MustSysctl(tb, "ipv4/conf/"+w.cali+"/proxy_arp", "1")
	h.ns.MustSysctl(tb, "ipv4/conf/"+w.cali+"/forwarding", "1")
	h.ns.RouteDev(tb, netip.PrefixFrom(w.ip, 32).String(), w.cali)
	w.caliIndex = uint32(h.ns.Link(tb, w.cali).Attrs().Index)

	h.putRoute(tb, maps.Route{Prefix: netip.PrefixFrom(w.ip, 32), Flags: maps.LocalWorkload | maps.InPool,
		Ifindex: w.caliIndex})
	if err := h.maps.Endpoints.Put(maps.Endpoint{Ifindex: w.caliIndex, IPv4: w.ip, MAC: w.mac}); err != nil {
		tb.Fatalf("%s: %v", h.name, err)
	}
	h.workloads = append(h.workloads, w)
	return w
}

func (h *host) putRoute(tb testing.TB, r maps.Route) {
	tb.Helper()
	if err := h.maps.Routes.Put(r); err != nil {
		tb.Fatalf("%s: %v", h.name, err)
	}
}

// kernelBefore reports the running kernel's release and whether it is older than major.minor.
func kernelBefore(major, minor int) (string, bool) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", false
	}
	release := unix.ByteSliceToString(u.Release[:])
	var maj, mnr int
	if _, err := fmt.Sscanf(release, "%d.%d", &maj, &mnr); err != nil {
		return release, false
	}
	return release, maj < major || maj == major && mnr < minor
}

// attach puts the programs on every cali* veth and the uplink, XDP included.
func (h *host) attach(tb testing.TB) {
	tb.Helper()
	err := h.ns.Do(func() error {
		for _, w := range h.workloads {
			if err := h.d.AttachWorkload(w.cali); err != nil {
				return err
			}
		}
		return h.d.AttachUplink(uplink, true)
	})
	// Only a kernel older than tcx (6.6) may refuse it; on a newer one the refusal is our defect.
	if release, old := kernelBefore(6, 6); h.mode == loader.TCX && errors.Is(err, ebpf.ErrNotSupported) && old {
		tb.Skipf("kernel %s lacks tcx (needs 6.6): %v", release, err)
	}
	if err != nil {
		tb.Fatalf("%s: %v", h.name, err)
	}

	// The mode under test really is the one in use: tcx mode never fell back to clsact.
	tc := loader.AttachedTCX
	if h.mode == loader.TCLegacy {
		tc = loader.AttachedClsact
	}
	hooks := map[string][]loader.Hook{uplink: {loader.HookFromNet, loader.HookXDPFromNet}}
	for _, w := range h.workloads {
		hooks[w.cali] = []loader.Hook{loader.HookFromWep, loader.HookToWep}
	}
	_ = h.ns.Do(func() error {
		for ifname, hs := range hooks {
			for _, hook := range hs {
				want := tc
				if hook == loader.HookXDPFromNet {
					want = loader.AttachedXDP
				}
				if got, err := h.d.Attached(ifname, hook); err != nil || got != want {
					tb.Errorf("%s: %s %s attached as %q (err %v), want %q", h.name, ifname, hook, got, err, want)
				}
			}
		}
		return nil
	})
}

// detach removes every program from every interface of the host and checks that none is left.
func (h *host) detach(tb testing.TB) {
	tb.Helper()
	ifnames := []string{uplink}
	for _, w := range h.workloads {
		ifnames = append(ifnames, w.cali)
	}
	err := h.ns.Do(func() error {
		for _, ifname := range ifnames {
			if err := h.d.DetachInterface(ifname); err != nil {
				return err
			}
		}
		for _, ifname := range ifnames {
			for _, hook := range loader.Hooks {
				if how, err := h.d.Attached(ifname, hook); !errors.Is(err, loader.ErrNotAttached) {
					tb.Errorf("%s: %s %s still attached as %q after detach (err %v)", h.name, ifname, hook, how, err)
				}
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("%s: %v", h.name, err)
	}
}
