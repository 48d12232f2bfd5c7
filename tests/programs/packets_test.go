package programs_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

const (
	ethHeaderLen = 14
	ipv4MinLen   = 20
	ttlOffset    = ethHeaderLen + 8  // IPv4 TTL within a frame
	csumOffset   = ethHeaderLen + 10 // IPv4 header checksum within a frame
)

func mustMAC(s string) net.HardwareAddr {
	mac, err := net.ParseMAC(s)
	if err != nil {
		panic(err) // only called with the constants of this package
	}
	return mac
}

// ethernet returns a frame: the two MACs, the EtherType and payload.
func ethernet(dst, src string, etherType uint16, payload []byte) []byte {
	b := make([]byte, 0, ethHeaderLen+len(payload))
	b = append(b, mustMAC(dst)...)
	b = append(b, mustMAC(src)...)
	b = binary.BigEndian.AppendUint16(b, etherType)
	return append(b, payload...)
}

// truncate cuts a copy of frame to n bytes.
func truncate(frame []byte, n int) []byte { return bytes.Clone(frame[:n]) }

// checksum is the Internet checksum (RFC 1071) of b, starting from the partial sum sum.
func checksum(b []byte, sum uint32) uint16 {
	for ; len(b) >= 2; b = b[2:] {
		sum += uint32(binary.BigEndian.Uint16(b))
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// pseudoHeader is the partial sum of the IPv4 pseudo-header that TCP and UDP checksums cover.
func pseudoHeader(src, dst netip.Addr, proto uint8, length int) uint32 {
	var sum uint32
	for _, a := range []netip.Addr{src, dst} {
		b := a.As4()
		sum += uint32(binary.BigEndian.Uint16(b[0:])) + uint32(binary.BigEndian.Uint16(b[2:]))
	}
	return sum + uint32(proto) + uint32(length)
}

// ipv4Spec describes an Ethernet/IPv4 frame. Options change it; build turns it into bytes with
// a correct IPv4 header checksum and a correct ICMP, TCP or UDP checksum.
type ipv4Spec struct {
	dstMAC, srcMAC string
	src, dst       netip.Addr
	ttl            uint8
	fragOff        uint16 // flags and fragment offset, as on the wire
	options        []byte
	proto          uint8
	data           int // bytes after the L4 header
	ipLen          int // when set, data is sized so that tot_len is ipLen
	editIP         func(ip []byte)
	badChecksum    bool // the header checksum is left wrong, the frame's only defect
	length         int  // when set, the finished frame is cut or zero-padded to this length
}

type opt func(*ipv4Spec)

// fromWorkload is a frame workload A sends through its veth: to the host veth's MAC, an ICMP
// echo request to workload B.
func fromWorkload(opts ...opt) []byte {
	return ipv4Spec{dstMAC: hostVethMAC, srcMAC: wepAMAC, src: wepA, dst: wepB}.build(opts)
}

// fromNetwork is a frame the router sends to this host's uplink: from a workload of another
// host, an ICMP echo request to workload B.
func fromNetwork(opts ...opt) []byte {
	return ipv4Spec{dstMAC: uplinkMAC, srcMAC: peerMAC, src: remoteDst, dst: wepB}.build(opts)
}

// fromHost is a frame the kernel delivers to workload B: from the host, to B's MAC.
func fromHost(opts ...opt) []byte {
	return ipv4Spec{dstMAC: wepBMAC, srcMAC: hostVethMAC, src: thisHost, dst: wepB}.build(opts)
}

// Options of a frame; each names the one thing it changes from the defaults.
func to(a netip.Addr) opt             { return func(s *ipv4Spec) { s.dst = a } }
func from(a netip.Addr) opt           { return func(s *ipv4Spec) { s.src = a } }
func dstMAC(mac string) opt           { return func(s *ipv4Spec) { s.dstMAC = mac } }
func ttl(n uint8) opt                 { return func(s *ipv4Spec) { s.ttl = n } }
func tcp() opt                        { return func(s *ipv4Spec) { s.proto = unix.IPPROTO_TCP } }
func udp() opt                        { return func(s *ipv4Spec) { s.proto = unix.IPPROTO_UDP } }
func ipOptions(b ...byte) opt         { return func(s *ipv4Spec) { s.options = b } }
func ipLen(n int) opt                 { return func(s *ipv4Spec) { s.ipLen = n } }
func frameLen(n int) opt              { return func(s *ipv4Spec) { s.length = n } }
func fragOff(v uint16) opt            { return func(s *ipv4Spec) { s.fragOff = v } }
func fragmentMF() opt                 { return fragOff(0x2000) }
func fragmentOffset(units uint16) opt { return fragOff(units & 0x1fff) }
func dontFragment() opt               { return fragOff(0x4000) }
func editIP(fn func(ip []byte)) opt   { return func(s *ipv4Spec) { s.editIP = fn } }
func versionIHL(b byte) opt           { return editIP(func(ip []byte) { ip[0] = b }) }

// totLen sets tot_len to fn of the length the packet has.
func totLen(fn func(n int) int) opt {
	return editIP(func(ip []byte) { putTotLen(ip, fn(int(binary.BigEndian.Uint16(ip[2:])))) })
}

func putTotLen(ip []byte, n int) { binary.BigEndian.PutUint16(ip[2:], uint16(n)) }

// Malformed IPv4 frames, as every parser must drop them.
var malformed = []struct {
	name string
	opts []opt
	// skbRefused: BPF_PROG_TEST_RUN refuses an skb whose IPv4 EtherType is not followed by a
	// full 20-byte header (EINVAL, before the program runs), so a test run can show these to
	// XDP only. TC programs meet them on a real veth, where a workload may send any frame, and
	// parse them with the same parse_ipv4 as XDP.
	skbRefused bool
}{
	{name: "IHL 4", opts: []opt{versionIHL(0x44)}},
	{name: "version 6 under the IPv4 EtherType", opts: []opt{versionIHL(0x65)}},
	{name: "tot_len one beyond the frame", opts: []opt{totLen(func(n int) int { return n + 1 })}},
	{name: "tot_len below the header length", opts: []opt{totLen(func(int) int { return ipv4MinLen - 1 })}},
	// Only a GSO skb (BIG TCP) may carry tot_len 0; test-run skbs are never GSO.
	{name: "tot_len 0", opts: []opt{totLen(func(int) int { return 0 })}},
	// IHL 6 and tot_len 24 agree, but the frame ends after the fixed header.
	{name: "options cut off", opts: []opt{ipOptions(routerAlert...), totLen(func(int) int { return ipv4MinLen + 4 }),
		frameLen(ethHeaderLen + ipv4MinLen)}},
	{name: "header cut short", opts: []opt{frameLen(ethHeaderLen + ipv4MinLen - 1)}, skbRefused: true},
	{name: "Ethernet header only", opts: []opt{frameLen(ethHeaderLen)}, skbRefused: true},
}

// badChecksum leaves the IPv4 header checksum wrong.
func badChecksum() opt { return func(s *ipv4Spec) { s.badChecksum = true } }

// routerAlert is the one IPv4 option routers commonly meet (RFC 2113): it makes IHL 6.
var routerAlert = []byte{0x94, 0x04, 0x00, 0x00}

func (s ipv4Spec) build(opts []opt) []byte {
	s.ttl, s.proto, s.data = 64, unix.IPPROTO_ICMP, 32
	for _, o := range opts {
		o(&s)
	}
	hlen := ipv4MinLen + len(s.options)
	if s.ipLen > 0 {
		s.data = s.ipLen - hlen - l4HeaderLen(s.proto)
	}
	l4 := s.l4()

	ip := make([]byte, hlen, hlen+len(l4))
	ip[0] = 4<<4 | byte(hlen/4)
	putTotLen(ip, hlen+len(l4))
	binary.BigEndian.PutUint16(ip[4:], 0x4d47) // identification
	binary.BigEndian.PutUint16(ip[6:], s.fragOff)
	ip[8] = s.ttl
	ip[9] = s.proto
	copy(ip[12:16], s.src.AsSlice())
	copy(ip[16:20], s.dst.AsSlice())
	copy(ip[20:], s.options)
	if s.editIP != nil {
		s.editIP(ip)
	}
	// The checksum stays right after an edit, so each malformed frame has one defect only.
	binary.BigEndian.PutUint16(ip[10:], checksum(ip, 0))
	if s.badChecksum {
		ip[10] ^= 0x5a
	}

	frame := ethernet(s.dstMAC, s.srcMAC, unix.ETH_P_IP, append(ip, l4...))
	if s.length > 0 {
		frame = append(frame, make([]byte, max(0, s.length-len(frame)))...)[:s.length]
	}
	return frame
}

func l4HeaderLen(proto uint8) int {
	switch proto {
	case unix.IPPROTO_TCP:
		return 20
	case unix.IPPROTO_UDP, unix.IPPROTO_ICMP:
		return 8
	}
	panic(fmt.Sprintf("no L4 header for protocol %d", proto))
}

// l4 is an ICMP echo request, a TCP SYN or a UDP datagram with s.data bytes of payload.
func (s ipv4Spec) l4() []byte {
	n := l4HeaderLen(s.proto) + s.data
	b := make([]byte, n)
	for i := l4HeaderLen(s.proto); i < n; i++ {
		b[i] = byte(i)
	}
	switch s.proto {
	case unix.IPPROTO_ICMP:
		b[0] = 8                                  // echo request
		binary.BigEndian.PutUint16(b[4:], 0x4d47) // identifier
		binary.BigEndian.PutUint16(b[6:], 1)      // sequence
		binary.BigEndian.PutUint16(b[2:], checksum(b, 0))
	case unix.IPPROTO_TCP:
		binary.BigEndian.PutUint16(b[0:], 40000)
		binary.BigEndian.PutUint16(b[2:], 80)
		binary.BigEndian.PutUint32(b[4:], 1) // sequence number
		b[12] = 5 << 4                       // data offset
		b[13] = 0x02                         // SYN
		binary.BigEndian.PutUint16(b[14:], 64240)
		binary.BigEndian.PutUint16(b[16:], checksum(b, pseudoHeader(s.src, s.dst, s.proto, n)))
	case unix.IPPROTO_UDP:
		binary.BigEndian.PutUint16(b[0:], 40000)
		binary.BigEndian.PutUint16(b[2:], 53)
		binary.BigEndian.PutUint16(b[4:], uint16(n))
		c := checksum(b, pseudoHeader(s.src, s.dst, s.proto, n))
		if c == 0 {
			c = 0xffff // zero means "no checksum" in UDP
		}
		binary.BigEndian.PutUint16(b[6:], c)
	}
	return b
}

// arp is an ARP request (to broadcast) or reply (to dst) for IPv4 over Ethernet.
func arp(dst, src string, reply bool, sender, target netip.Addr) []byte {
	b := make([]byte, 28)
	binary.BigEndian.PutUint16(b[0:], 1) // Ethernet
	binary.BigEndian.PutUint16(b[2:], unix.ETH_P_IP)
	b[4], b[5] = 6, 4
	op := uint16(1)
	targetMAC := "00:00:00:00:00:00"
	if reply {
		op, targetMAC = 2, dst
	}
	binary.BigEndian.PutUint16(b[6:], op)
	copy(b[8:], mustMAC(src))
	copy(b[14:], sender.AsSlice())
	copy(b[18:], mustMAC(targetMAC))
	copy(b[24:], target.AsSlice())
	return ethernet(dst, src, unix.ETH_P_ARP, b)
}

// ipv6Echo is an ICMPv6 echo request between two addresses of the IPv6 benchmarking range
// (2001:2::/48, RFC 5180), the counterpart of 198.18.0.0/15.
func ipv6Echo(dst, src string) []byte {
	srcIP, dstIP := netip.MustParseAddr("2001:2::1"), netip.MustParseAddr("2001:2::2")
	icmp := []byte{128, 0, 0, 0, 0x4d, 0x47, 0, 1, 'm', 'a', 'r', 'g', 'a', 'y', '!', '!'}
	var sum uint32
	for _, a := range []netip.Addr{srcIP, dstIP} {
		b := a.As16()
		for i := 0; i < 16; i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
	}
	sum += uint32(len(icmp)) + unix.IPPROTO_ICMPV6
	binary.BigEndian.PutUint16(icmp[2:], checksum(icmp, sum))

	ip := make([]byte, 40, 40+len(icmp))
	ip[0] = 6 << 4
	binary.BigEndian.PutUint16(ip[4:], uint16(len(icmp)))
	ip[6], ip[7] = unix.IPPROTO_ICMPV6, 64
	copy(ip[8:], srcIP.AsSlice())
	copy(ip[24:], dstIP.AsSlice())
	return ethernet(dst, src, unix.ETH_P_IPV6, append(ip, icmp...))
}

// ipv4HeaderValid reports whether the IPv4 header of frame carries a correct checksum: summed
// with it, the header's words must give 0xffff (RFC 1071), whichever zero the sender used.
func ipv4HeaderValid(frame []byte) bool {
	if len(frame) < ethHeaderLen+ipv4MinLen {
		return false
	}
	hlen := int(frame[ethHeaderLen]&0x0f) * 4
	if hlen < ipv4MinLen || len(frame) < ethHeaderLen+hlen {
		return false
	}
	return checksum(frame[ethHeaderLen:ethHeaderLen+hlen], 0) == 0
}

// rewrite is how a program must leave a frame it forwards, given the frame it received.
type rewrite func(in []byte) []byte

// delivered: into a local workload, so from the host veth's MAC to the workload's, one hop
// (TTL) further.
func delivered(workloadMAC string) rewrite {
	return func(in []byte) []byte {
		out := routed()(in)
		copy(out[0:6], mustMAC(workloadMAC))
		copy(out[6:12], mustMAC(hostVethMAC))
		return out
	}
}

// routed: out of the uplink, one hop further. The MACs stay as they came: bpf_redirect_neigh
// fills them in from the neighbour table after the program returns.
func routed() rewrite {
	return func(in []byte) []byte {
		out := bytes.Clone(in)
		out[ttlOffset]--
		binary.BigEndian.PutUint16(out[csumOffset:], 0)
		binary.BigEndian.PutUint16(out[csumOffset:], checksum(out[ethHeaderLen:ethHeaderLen+ipv4MinLen], 0))
		return out
	}
}

// checkOutput compares the frame a program left with what it should have left: in itself when
// want is nil, else want(in) with any valid IPv4 header checksum, since an incremental update
// (RFC 1624) may give the other zero of one's complement than a full recomputation.
func checkOutput(tb testing.TB, in, out []byte, want rewrite) {
	tb.Helper()
	if want == nil {
		if !bytes.Equal(out, in) {
			tb.Errorf("frame changed; want it unchanged\n got %x\nwant %x", out, in)
		}
		return
	}
	exp := want(in)
	masked := func(b []byte) []byte {
		b = bytes.Clone(b)
		if len(b) >= csumOffset+2 {
			b[csumOffset], b[csumOffset+1] = 0, 0
		}
		return b
	}
	if !bytes.Equal(masked(out), masked(exp)) {
		tb.Errorf("frame differs beyond the IPv4 checksum\n got %x\nwant %x", out, exp)
	}
	if !ipv4HeaderValid(out) {
		tb.Errorf("IPv4 header checksum %#04x is wrong (recomputed: %#04x)",
			binary.BigEndian.Uint16(out[csumOffset:]), binary.BigEndian.Uint16(exp[csumOffset:]))
	}
}
