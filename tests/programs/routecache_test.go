package programs_test

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
)

// An established flow keeps the routes of its addresses (and a local receiver's MAC) in its
// conntrack entry, so its packets walk no routes trie. Every write to the routes or endpoints
// maps bumps the route generation, which makes what entries keep stale: a change reaches
// established flows on their next packet, exactly as it reaches new ones.
func TestRouteCache(t *testing.T) {
	t.Run("established flows use the kept route until the generation moves", func(t *testing.T) {
		w := policyWorld(t)
		ack := tcpPkt(wepA, 41000, remoteDst, 80, tcpACK)
		w.send(t, "SYN to a remote block", sentByA, tcpPkt(wepA, 41000, remoteDst, 80, tcpSYN), fwdRemote)
		w.send(t, "ACK", sentByA, ack, fwdRemote)

		// Deleted behind the wrapper's back: no bump. The entry goes on with its route, which
		// proves it is kept; a new flow finds no route.
		k := loader.MargayRouteKey{Prefixlen: uint32(remoteBlock.Bits()), Addr: be32(remoteBlock.Addr())}
		if err := w.dp.Maps().Routes.Delete(&k); err != nil {
			t.Fatal(err)
		}
		w.send(t, "established, the kept route", sentByA, ack, fwdRemote)
		w.send(t, "a new flow", sentByA, tcpPkt(wepA, 41001, remoteDst, 80, tcpSYN), passNoRoute)

		if err := w.maps.Config.BumpRouteGeneration(); err != nil {
			t.Fatal(err)
		}
		w.send(t, "established, after the bump", sentByA, ack, passNoRoute)

		// Through the wrapper, as the agent writes: the route is back for both.
		w.putRoute(t, maps.Route{Prefix: remoteBlock, Flags: maps.RemoteBlock | maps.InPool, Ifindex: w.ifindex[uplink], NextHop: otherHost})
		w.send(t, "established, the route put back", sentByA, ack, fwdRemote)
		w.send(t, "the new flow again", sentByA, tcpPkt(wepA, 41001, remoteDst, 80, tcpACK), fwdRemote)
	})

	t.Run("a route changed to the kernel's", func(t *testing.T) {
		w := policyWorld(t)
		ack := tcpPkt(wepA, 41002, remoteDst, 80, tcpACK)
		w.send(t, "SYN", sentByA, tcpPkt(wepA, 41002, remoteDst, 80, tcpSYN), fwdRemote)
		w.send(t, "ACK", sentByA, ack, fwdRemote)
		// The destination becomes an address of a host: the kernel's job.
		w.putRoute(t, maps.Route{Prefix: netip.PrefixFrom(remoteDst, 32), Flags: maps.Host})
		w.send(t, "established, now to a host", sentByA, ack, passKernel)
	})

	t.Run("a local receiver's MAC and endpoint", func(t *testing.T) {
		w := policyWorld(t)
		syn := tcpPkt(wepA, 41003, wepB, 80, tcpSYN)
		ack := tcpPkt(wepA, 41003, wepB, 80, tcpACK)
		w.send(t, "SYN to B", sentByA, syn, fwdLocal)
		w.send(t, "ACK to B", sentByA, ack, fwdLocal)

		newMAC := "0a:58:c6:13:00:42"
		if err := w.maps.Endpoints.Put(maps.Endpoint{Ifindex: w.ifindex[caliB], IPv4: wepB, MAC: mustMAC(newMAC)}); err != nil {
			t.Fatal(err)
		}
		frame := sentByA.frame(ack)
		verdict, out, err := w.run(fromWep, caliA, frame)
		if err != nil {
			t.Fatal(err)
		}
		if verdict != tcActRedirect || !bytes.Equal(out[0:6], mustMAC(newMAC)) {
			t.Errorf("after B's MAC changed: verdict %s, destination MAC %x; want TC_ACT_REDIRECT to %s",
				verdictName(fromWep, verdict), out[0:6], newMAC)
		}

		if err := w.maps.Endpoints.Delete(w.ifindex[caliB]); err != nil {
			t.Fatal(err)
		}
		w.send(t, "established, B's endpoint gone", sentByA, ack, passNoEndpoint)
	})

	t.Run("a source that became local is spoofed from the network", func(t *testing.T) {
		w := policyWorld(t)
		in := tcpPkt(remoteDst, 50001, wepB, 8080, tcpACK)
		w.send(t, "from a remote workload to B", fromUplink, tcpPkt(remoteDst, 50001, wepB, 8080, tcpSYN), fwdLocal)
		w.send(t, "again", fromUplink, in, fwdLocal)
		// The address now belongs to a workload of this host: from the network it is a lie.
		w.putRoute(t, maps.Route{Prefix: netip.PrefixFrom(remoteDst, 32), Flags: maps.LocalWorkload | maps.InPool, Ifindex: w.ifindex[caliC]})
		w.send(t, "established, its source now local", fromUplink, in, dropSpoofed)
	})
}

// be32 is an IPv4 address as the maps' keys hold it: its bytes in network order.
func be32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}
