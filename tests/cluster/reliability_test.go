package cluster_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/cluster"
	"github.com/margaynet/margay/tests/netns"
	"github.com/margaynet/margay/tests/poll"
)

// Reliability (issue 9): what an agent crash, an upgrade, hand-made changes and containers that
// vanish without CNI DEL do to traffic and state. The figures each test logs are the ones of the
// README's Reliability table.

// probeInterval is the pace of the ping flood (the UDP prober of tests/netns).
const probeInterval = 10 * time.Millisecond

// pins are the IDs behind a host's pins: maps by name, links by pin name with the program each
// runs.
type pins struct {
	maps  map[string]ebpf.MapID
	links map[string]link.ID
	progs map[string]ebpf.ProgramID
}

func readPins(t *testing.T, root string) pins {
	t.Helper()
	p := pins{maps: map[string]ebpf.MapID{}, links: map[string]link.ID{}, progs: map[string]ebpf.ProgramID{}}
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(root, e.Name()), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			t.Fatalf("open pinned map %s: %v", e.Name(), err)
		}
		info, err := m.Info()
		m.Close()
		if err != nil {
			t.Fatal(err)
		}
		p.maps[e.Name()], _ = info.ID()
	}
	entries, err = os.ReadDir(filepath.Join(root, "links"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		l, err := link.LoadPinnedLink(filepath.Join(root, "links", e.Name()), nil)
		if err != nil {
			t.Fatalf("open pinned link %s: %v", e.Name(), err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			t.Fatal(err)
		}
		p.links[e.Name()], p.progs[e.Name()] = info.ID, info.Program
	}
	return p
}

func pingOnce(from, to *cluster.Workload) error {
	out, err := from.NS.Run("ping", "-c", "1", "-W", "1", to.IP.String())
	if err != nil {
		return fmt.Errorf("%s → %s: %v\n%s", from.Name, to.Name, err, out)
	}
	return nil
}

// waitReady waits for the agent's /readyz and returns how long that took from since.
func waitReady(t *testing.T, h *cluster.Host, since time.Time) time.Duration {
	t.Helper()
	var took time.Duration
	poll.Until(t, h.Name+" ready", 60*time.Second, func() error {
		if err := h.Alive(); err != nil {
			t.Fatalf("%s's agent: %v", h.Name, err)
		}
		code, body, err := h.Get("/readyz")
		if err != nil || code != 200 {
			return fmt.Errorf("%d %v %s", code, err, body)
		}
		took = time.Since(since)
		return nil
	})
	return took
}

// waitConverged waits until the agent's BGP sessions are all up and it no longer keeps routes
// from before its start (margay_bgp_routes_retained 0), and returns how long that took from since.
func waitConverged(t *testing.T, h *cluster.Host, since time.Time) time.Duration {
	t.Helper()
	var took time.Duration
	poll.Until(t, h.Name+" BGP converged", 60*time.Second, func() error {
		code, body, err := h.Get("/bgp/peers")
		if err != nil || code != 200 || !strings.Contains(body, `"state":"Established"`) || strings.Contains(body, `"state":"Active"`) ||
			strings.Contains(body, `"state":"Idle"`) {
			return fmt.Errorf("peers: %d %v %s", code, err, body)
		}
		code, body, err = h.Get("/metrics")
		if err != nil || code != 200 {
			return fmt.Errorf("metrics: %d %v", code, err)
		}
		if !strings.Contains(body, "\nmargay_bgp_routes_retained 0\n") {
			return errors.New("still keeps routes from before its start")
		}
		took = time.Since(since)
		return nil
	})
	return took
}

// progress waits until the stream's sink and the probe have both moved on by the given amounts,
// which shows traffic flowing at that moment.
func progress(t *testing.T, what string, s *netns.Stream, bytes int64, p *netns.Probe, echoes int) {
	t.Helper()
	b0, e0 := s.Received(), p.Received()
	poll.Until(t, what, 30*time.Second, func() error {
		if db, de := s.Received()-b0, p.Received()-e0; db < bytes || de < echoes {
			return fmt.Errorf("%d bytes and %d echoes so far", db, de)
		}
		return nil
	})
}

// An agent killed with SIGKILL and started again disturbs nothing: a TCP stream and a 100/s
// ping flood between workloads on two hosts lose nothing, the dataplane forwards while no agent
// runs, the new agent adopts the pinned maps and links (same IDs, its own programs swapped in)
// and programs a workload added while it was dead.
func TestAgentKillRestart(t *testing.T) {
	c := cluster.New(t)
	// The restart time (the hold time) must cover the restart, BGP session included.
	h1 := c.AddHost("vm100", "198.18.0.100/24", grBGP...)
	h2 := c.AddHost("vm101", "198.18.0.101/24", grBGP...)
	a, b := c.AddWorkload(h1, "a"), c.AddWorkload(h2, "b")
	a.WaitProgrammed(t)
	b.WaitProgrammed(t)
	poll.Until(t, "ping a → b", 30*time.Second, func() error { return pingOnce(a, b) })

	probe := netns.StartProbe(t, a.NS, a.IP, b.NS, b.IP, probeInterval)
	stream := netns.StartStream(t, a.NS, a.IP, b.NS, b.IP, 16<<10, 10*time.Millisecond)
	progress(t, "traffic before the kill", stream, 256<<10, probe, 50)
	before := readPins(t, h1.Root)

	h1.Kill()
	killed := time.Now()
	atKill := stream.Received()
	late := c.StartWorkload(h1, "late") // CNI ADD while no agent runs: it waits to be programmed
	progress(t, "traffic while the agent is dead", stream, 256<<10, probe, 50)
	deadBytes := stream.Received() - atKill

	h1.Start()
	started := time.Now()
	ready := waitReady(t, h1, started)
	lw := late()
	lw.WaitProgrammed(t)
	reconciled := time.Since(started)
	// Until its BGP session is back and the peer's table arrived (End-of-RIB), the new agent
	// keeps the remote routes it found; then BGP alone decides, and traffic goes on.
	converged := waitConverged(t, h1, started)
	atReady := stream.Received()
	progress(t, "traffic after the restart", stream, 256<<10, probe, 100)
	poll.Until(t, "ping late → b", 30*time.Second, func() error { return pingOnce(lw, b) })

	res := probe.Stop()
	if err := stream.Stop(10 * time.Second); err != nil {
		t.Errorf("TCP stream through the restart: %v", err)
	}
	t.Logf("agent SIGKILL at +0, dead %v; ready %v after start; workload added while dead programmed %v after start; BGP converged %v after start",
		started.Sub(killed).Round(time.Millisecond), ready.Round(time.Millisecond), reconciled.Round(time.Millisecond),
		converged.Round(time.Millisecond))
	t.Logf("ping flood (UDP echo every %v): %v", probeInterval, res)
	t.Logf("TCP stream: %d bytes in all, %d while the agent was dead, %d after it was ready; no reset",
		stream.Received(), deadBytes, stream.Received()-atReady)
	if len(res.Lost) > 0 {
		t.Errorf("probes lost across the kill and restart: %v; the first: %v", res, res.Lost[:min(len(res.Lost), 20)])
	}

	after := readPins(t, h1.Root)
	for name, id := range before.maps {
		if after.maps[name] != id {
			t.Errorf("map %s: ID %d before the kill, %d after: re-created instead of adopted", name, id, after.maps[name])
		}
	}
	replaced := 0
	for name, id := range before.links {
		// A netfilter link cannot switch programs: the new agent attaches its own beside the old
		// one before removing it (loader.EnsureNetfilter), so the hook is never empty either.
		if strings.HasPrefix(name, "netfilter_") {
			if after.links[name] == 0 || after.links[name] == id {
				t.Errorf("link %s: ID %d before the kill, %d after: want a new link", name, id, after.links[name])
			}
			replaced++
		} else if after.links[name] != id {
			t.Errorf("link %s: ID %d before the kill, %d after: re-attached instead of adopted", name, id, after.links[name])
		}
		if after.progs[name] == before.progs[name] {
			t.Errorf("link %s still runs program %d of the killed agent", name, before.progs[name])
		}
	}
	if replaced != 2 {
		t.Errorf("%d netfilter links before the kill, want 2: %v", replaced, before.links)
	}
	t.Logf("adopted %d pinned maps and %d pinned tcx and XDP links (same IDs), each switched to the new agent's program; replaced the 2 netfilter links",
		len(before.maps), len(before.links)-replaced)
}

// installOldLayout makes h's dataplane look like the one an older agent with another routes map
// left: a routes map created from the current spec as changed by mutate, holding the current
// entries (padded or cut to its value size), pinned in place of the current one, and every
// pinned link switched to programs that use it. The agent must be stopped.
func installOldLayout(t *testing.T, h *cluster.Host, mutate func(*ebpf.MapSpec)) ebpf.MapID {
	t.Helper()
	spec, err := loader.LoadMargay()
	if err != nil {
		t.Fatal(err)
	}
	ms := spec.Maps["routes"]
	path := filepath.Join(h.Root, "routes")
	cur, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	mutate(ms)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	var objs loader.MargayObjects
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: h.Root}}); err != nil {
		t.Fatalf("load the old layout: %v", err)
	}
	defer objs.Close()
	key := make([]byte, cur.KeySize())
	val := make([]byte, cur.ValueSize())
	n := 0
	for it := cur.Iterate(); it.Next(&key, &val); n++ {
		v := make([]byte, ms.ValueSize)
		copy(v, val)
		if err := objs.Routes.Put(key, v); err != nil {
			t.Fatalf("copy route: %v", err)
		}
	}
	progs := map[loader.Hook]*ebpf.Program{loader.HookFromWep: objs.FromWep, loader.HookToWep: objs.ToWep,
		loader.HookFromNet: objs.FromNet, loader.HookXDPFromNet: objs.XdpFromNet}
	pinned, err := loader.LinkPins(h.Root)
	if err != nil {
		t.Fatal(err)
	}
	for ifname, hooks := range pinned {
		for _, hook := range hooks {
			l, err := link.LoadPinnedLink(filepath.Join(h.Root, "links", ifname+"_"+string(hook)), nil)
			if err != nil {
				t.Fatal(err)
			}
			err = l.Update(progs[hook])
			l.Close()
			if err != nil {
				t.Fatalf("switch %s %s to the old layout: %v", ifname, hook, err)
			}
		}
	}
	info, err := objs.Routes.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	t.Logf("old layout: routes map %d (max_entries %d, value size %d) with %d routes, the links of %d interfaces switched",
		id, ms.MaxEntries, ms.ValueSize, n, len(pinned))
	return id
}

// An agent upgraded to a binary whose routes map has another layout (capacity, value size) finds
// the old map pinned: it creates the new map, fills it (copying entries when their layout is
// the same, from the datastore and BGP otherwise), switches the links to its programs in one
// step each and pins the new map in place — while a ping flood between hosts loses nothing. It
// becomes ready and stays up (no crash loop).
func TestAgentUpgradeMapLayout(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*ebpf.MapSpec)
	}{
		{"max_entries", func(ms *ebpf.MapSpec) { ms.MaxEntries /= 2 }},
		// A value of another size has no BTF type of ours: the map is created without BTF.
		{"value_size", func(ms *ebpf.MapSpec) { ms.ValueSize += 8; ms.Key, ms.Value = nil, nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := cluster.New(t)
			// The restart time (the hold time) must cover the restart, BGP session included.
			h1 := c.AddHost("vm100", "198.18.0.100/24", grBGP...)
			h2 := c.AddHost("vm101", "198.18.0.101/24", grBGP...)
			a, b := c.AddWorkload(h1, "a"), c.AddWorkload(h2, "b")
			a.WaitProgrammed(t)
			b.WaitProgrammed(t)
			poll.Until(t, "ping a → b", 30*time.Second, func() error { return pingOnce(a, b) })

			h1.Stop()
			oldID := installOldLayout(t, h1, tc.mutate)
			poll.Until(t, "ping a → b through the old layout", 30*time.Second, func() error { return pingOnce(a, b) })

			probe := netns.StartProbe(t, a.NS, a.IP, b.NS, b.IP, probeInterval)
			stream := netns.StartStream(t, a.NS, a.IP, b.NS, b.IP, 16<<10, 10*time.Millisecond)
			progress(t, "traffic before the upgrade", stream, 128<<10, probe, 50)

			h1.Start()
			started := time.Now()
			ready := waitReady(t, h1, started)
			// The upgrade is done when every link runs a program of the new agent, which uses
			// the new routes map.
			spec, err := loader.LoadMargay()
			if err != nil {
				t.Fatal(err)
			}
			want := spec.Maps["routes"]
			var newID ebpf.MapID
			poll.Until(t, "links switched to the new routes map", 30*time.Second, func() error {
				m, err := ebpf.LoadPinnedMap(filepath.Join(h1.Root, "routes"), &ebpf.LoadPinOptions{ReadOnly: true})
				if err != nil {
					return err
				}
				defer m.Close()
				if m.MaxEntries() != want.MaxEntries || m.ValueSize() != want.ValueSize {
					return fmt.Errorf("pinned routes map: max_entries %d, value size %d", m.MaxEntries(), m.ValueSize())
				}
				info, err := m.Info()
				if err != nil {
					return err
				}
				newID, _ = info.ID()
				p := readPins(t, h1.Root)
				for name, prog := range p.progs {
					pr, err := ebpf.NewProgramFromID(prog)
					if err != nil {
						return err
					}
					pi, err := pr.Info()
					pr.Close()
					if err != nil {
						return err
					}
					ids, _ := pi.MapIDs()
					if slices.Contains(ids, oldID) || !slices.Contains(ids, newID) {
						return fmt.Errorf("link %s runs program %d with maps %v (old routes %d, new %d)", name, prog, ids, oldID, newID)
					}
				}
				return nil
			})
			switched := time.Since(started)
			converged := waitConverged(t, h1, started)
			progress(t, "traffic after the upgrade", stream, 256<<10, probe, 100)
			res := probe.Stop()
			if err := stream.Stop(10 * time.Second); err != nil {
				t.Errorf("TCP stream through the upgrade: %v", err)
			}
			if err := h1.Alive(); err != nil {
				t.Fatalf("agent after the upgrade: %v", err)
			}
			if newID == oldID {
				t.Errorf("routes map %d kept", oldID)
			}
			t.Logf("upgrade (%s): ready %v after start, links on the new routes map (%d, was %d) after %v, BGP converged after %v",
				tc.name, ready.Round(time.Millisecond), newID, oldID, switched.Round(time.Millisecond), converged.Round(time.Millisecond))
			t.Logf("upgrade (%s): ping flood (UDP echo every %v): %v; TCP stream %d bytes, no reset",
				tc.name, probeInterval, res, stream.Received())
			if len(res.Lost) > 0 {
				t.Errorf("%d probes lost across the upgrade: %v", len(res.Lost), res)
			}
			set := h1.Maps(t)
			if err := routed(set, blockOf(t, c, h2.Name), h2.Addr.Addr()); err != nil {
				t.Error(err)
			}
		})
	}
}

// What an operator (or another program) changes by hand on a host — routes, sysctls, map entries
// — is put back by the next full pass, and what the agent owns but no longer wants is removed:
// all within a small multiple of --reconcile-interval.
func TestHandChangesRepaired(t *testing.T) {
	const interval = time.Second
	c := cluster.New(t)
	flags := slices.Concat(fastBGP, []string{"--reconcile-interval", interval.String()})
	h1 := c.AddHost("vm100", "198.18.0.100/24", flags...)
	h2 := c.AddHost("vm101", "198.18.0.101/24", flags...)
	a, b := c.AddWorkload(h1, "a"), c.AddWorkload(h2, "b")
	a.WaitProgrammed(t)
	b.WaitProgrammed(t)
	set := h1.Maps(t)
	remote := blockOf(t, c, h2.Name)
	poll.Until(t, "vm100 learned vm101's block", 30*time.Second, func() error { return routed(set, remote, h2.Addr.Addr()) })

	rec, err := c.DS.Workloads(h1.Name).Get(t.Context(), a.ID())
	if err != nil {
		t.Fatal(err)
	}
	cali := rec.Value.IfName
	ifindex := uint32(h1.NS.Link(t, cali).Attrs().Index)
	wep := netip.PrefixFrom(a.IP, 32)
	wantEP, err := set.Endpoints.Get(ifindex)
	if err != nil {
		t.Fatal(err)
	}
	wantWEP, err := set.Routes.Get(wep)
	if err != nil {
		t.Fatal(err)
	}
	wantRemote, err := set.Routes.Get(remote)
	if err != nil {
		t.Fatal(err)
	}
	sysctls := map[string]string{
		"ipv4/ip_forward":                     "1",
		"ipv4/conf/" + cali + "/proxy_arp":    "1",
		"ipv4/conf/" + cali + "/forwarding":   "1",
		"ipv4/neigh/" + cali + "/proxy_delay": "0",
	}
	staleBlock := netip.MustParsePrefix("198.19.254.0/26")
	staleKernel := netip.MustParsePrefix("198.19.253.0/26")
	ghost := uint32(999999) // no interface has it

	// Everything at once, as fast as possible, so that one pass sees it all.
	h1.NS.MustRun(t, "ip", "route", "del", wep.String(), "dev", cali)
	h1.NS.MustRun(t, "ip", "route", "del", remote.String())
	for key, want := range sysctls {
		off := "0"
		if strings.HasSuffix(key, "proxy_delay") {
			off = "80"
		}
		if want == off {
			t.Fatal("bad test")
		}
		if err := h1.NS.Sysctl(key, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := set.Endpoints.Delete(ifindex); err != nil {
		t.Fatal(err)
	}
	if err := set.Routes.Delete(wep); err != nil {
		t.Fatal(err)
	}
	if err := set.Routes.Delete(remote); err != nil {
		t.Fatal(err)
	}
	if err := set.Routes.Put(maps.Route{Prefix: staleBlock, Flags: maps.RemoteBlock | maps.InPool,
		Ifindex: wantRemote.Ifindex, NextHop: netip.MustParseAddr("198.18.0.150")}); err != nil {
		t.Fatal(err)
	}
	if err := set.Endpoints.Put(maps.Endpoint{Ifindex: ghost, IPv4: netip.MustParseAddr("198.19.254.1"),
		MAC: wantEP.MAC}); err != nil {
		t.Fatal(err)
	}
	h1.NS.MustRun(t, "ip", "route", "add", staleKernel.String(), "via", "198.18.0.150", "dev", "ens32", "proto", "77")
	changed := time.Now()

	// What is left to repair, or nil.
	check := func() error {
		var errs []error
		for key, want := range sysctls {
			var got []byte
			err := h1.NS.Do(func() (err error) { got, err = os.ReadFile(filepath.Join("/proc/sys/net", key)); return err })
			if err != nil || strings.TrimSpace(string(got)) != want {
				errs = append(errs, fmt.Errorf("sysctl %s = %q, %v", key, got, err))
			}
		}
		kernel := map[string]string{wep.String(): "dev " + cali, remote.String(): "via " + h2.Addr.Addr().String(), staleKernel.String(): ""}
		for dst, want := range kernel {
			out, err := h1.NS.Run("ip", "-4", "route", "show", "exact", dst, "proto", "77")
			if err != nil || (want == "") != (strings.TrimSpace(out) == "") || !strings.Contains(out, want) {
				errs = append(errs, fmt.Errorf("kernel route %s: %q, %v", dst, strings.TrimSpace(out), err))
			}
		}
		if ep, err := set.Endpoints.Get(ifindex); err != nil || !ep.Equal(wantEP) {
			errs = append(errs, fmt.Errorf("endpoint %d: %+v, %v", ifindex, ep, err))
		}
		if _, err := set.Endpoints.Get(ghost); !errors.Is(err, maps.ErrNotFound) {
			errs = append(errs, fmt.Errorf("stale endpoint %d still there (%v)", ghost, err))
		}
		for p, want := range map[netip.Prefix]maps.Route{wep: wantWEP, remote: wantRemote} {
			if rt, err := set.Routes.Get(p); err != nil || rt != want {
				errs = append(errs, fmt.Errorf("map route %v: %+v, %v", p, rt, err))
			}
		}
		if _, err := set.Routes.Get(staleBlock); !errors.Is(err, maps.ErrNotFound) {
			errs = append(errs, fmt.Errorf("stale map route %v still there (%v)", staleBlock, err))
		}
		return errors.Join(errs...)
	}
	// A full pass starts at most one interval after the changes; give it three more to finish
	// on a loaded machine.
	poll.Until(t, "hand-made changes repaired", 4*interval, check)
	took := time.Since(changed)
	t.Logf("repaired 2 deleted kernel routes, 4 sysctls, 3 deleted map entries and removed 2 stale map entries and 1 stale kernel route in %v (--reconcile-interval %v)",
		took.Round(10*time.Millisecond), interval)
	poll.Until(t, "ping a → b", 10*time.Second, func() error { return pingOnce(a, b) })
}

// A container whose network namespace goes away without CNI DEL (a runtime crash, a node
// rebooted without cleanup) loses its veth with it; the agent notices, removes the workload's
// record, and IPAM garbage collection frees its address: no record, handle, allocation, kernel
// route, map entry or link pin is left. A workload whose veth was deleted but whose namespace
// lives on keeps its record and address.
func TestOrphanedWorkloadCollected(t *testing.T) {
	c := cluster.New(t)
	h := c.AddHost("vm100", "198.18.0.100/24", "--reconcile-interval", "1s", "--gc-interval", "1s")
	gone, keep := c.AddWorkload(h, "gone"), c.AddWorkload(h, "keep")
	gone.WaitProgrammed(t)
	set := h.Maps(t)
	rec, err := c.DS.Workloads(h.Name).Get(t.Context(), gone.ID())
	if err != nil {
		t.Fatal(err)
	}
	cali := rec.Value.IfName
	ifindex := uint32(h.NS.Link(t, cali).Attrs().Index)
	if _, err := c.DS.Handles().Get(t.Context(), gone.ID()); err != nil {
		t.Fatalf("handle of %s: %v", gone.ID(), err)
	}

	// keep's veth is deleted by hand while its namespace lives on: broken, but its address is in
	// use, so it must stay. Deleted first, it is seen at every collection that sees gone.
	keepRec, err := c.DS.Workloads(h.Name).Get(t.Context(), keep.ID())
	if err != nil {
		t.Fatal(err)
	}
	h.NS.MustRun(t, "ip", "link", "del", keepRec.Value.IfName)
	gone.NS.Delete(t) // ip netns del, no CNI DEL
	deleted := time.Now()
	var vethGone time.Duration
	left := func() error {
		var errs []error
		if _, err := h.NS.Netlink().LinkByName(cali); err == nil {
			return fmt.Errorf("%s still exists", cali)
		} else if vethGone == 0 {
			vethGone = time.Since(deleted)
		}
		if _, err := c.DS.Workloads(h.Name).Get(t.Context(), gone.ID()); !errors.Is(err, datastore.ErrNotFound) {
			errs = append(errs, fmt.Errorf("workload record: %v", err))
		}
		if _, err := c.DS.Handles().Get(t.Context(), gone.ID()); !errors.Is(err, datastore.ErrNotFound) {
			errs = append(errs, fmt.Errorf("IPAM handle: %v", err))
		}
		blocks, _, err := c.DS.Blocks().List(t.Context())
		if err != nil {
			return err
		}
		for _, bl := range blocks {
			for _, al := range bl.Value.Allocations {
				if al.IP == gone.IP || al.Handle == gone.ID() {
					errs = append(errs, fmt.Errorf("%v still allocated to %s in %v", al.IP, al.Handle, bl.Value.CIDR))
				}
			}
		}
		if out, err := h.NS.Run("ip", "-4", "route", "show", "exact", gone.IP.String()+"/32"); err != nil || strings.TrimSpace(out) != "" {
			errs = append(errs, fmt.Errorf("kernel route: %q %v", out, err))
		}
		if _, err := set.Endpoints.Get(ifindex); !errors.Is(err, maps.ErrNotFound) {
			errs = append(errs, fmt.Errorf("endpoint %d: %v", ifindex, err))
		}
		if _, err := set.Routes.Get(netip.PrefixFrom(gone.IP, 32)); !errors.Is(err, maps.ErrNotFound) {
			errs = append(errs, fmt.Errorf("map route %v: %v", gone.IP, err))
		}
		for _, hook := range []string{"from_wep", "to_wep"} {
			if _, err := os.Stat(filepath.Join(h.Root, "links", cali+"_"+hook)); !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("link pin %s_%s: %v", cali, hook, err))
			}
		}
		return errors.Join(errs...)
	}
	poll.Until(t, "the vanished workload collected", 30*time.Second, left)
	took := time.Since(deleted)
	t.Logf("netns deleted without CNI DEL: veth gone after %v, record, address, routes, map entries and pins after %v (--gc-interval 1s)",
		vethGone.Round(time.Millisecond), took.Round(time.Millisecond))

	// IPAM freed gone's address two collections after its record went: a removal of keep's
	// record would have been counted by then.
	if _, err := c.DS.Workloads(h.Name).Get(t.Context(), keep.ID()); err != nil {
		t.Errorf("record of %s, whose netns lives: %v", keep.Name, err)
	}
	if _, err := c.DS.Handles().Get(t.Context(), keep.ID()); err != nil {
		t.Errorf("handle of %s, whose netns lives: %v", keep.Name, err)
	}
	code, body, err := h.Get("/metrics")
	if err != nil || code != 200 {
		t.Fatalf("metrics: %d %v", code, err)
	}
	if !strings.Contains(body, "\nmargay_agent_orphaned_workloads_removed_total 1\n") {
		t.Errorf("margay_agent_orphaned_workloads_removed_total is not 1")
	}
}
