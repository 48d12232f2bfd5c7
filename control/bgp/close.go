package bgp

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// closeSessions shuts down, without a NOTIFICATION, the TCP connections of the configured
// sessions and then the speaker's listening sockets, and returns how many connections it shut.
// GoBGP has no call that ends a session silently (every stop, reset or delete sends a Cease), so
// the sockets are found among the process's file descriptors by their addresses: a connection
// whose remote end is a configured peer, on our listen port or the peer's port. shutdown(2)
// leaves the descriptor to its owner: GoBGP reads end-of-file, as it would after the peer
// closed, and closes it itself; the peer reads end-of-file too, which RFC 4724 treats as a
// restart. The listeners go too, so that no peer reconnects before StopBgp. It runs on run.
func (in *instance) closeSessions() (int, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, fmt.Errorf("list file descriptors: %w", err)
	}
	var listeners []int
	closed := 0
	var errs []error
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || !isTCPSocket(fd) {
			continue
		}
		local, ok := sockAddr(unix.Getsockname(fd))
		if !ok {
			continue
		}
		remote, err := unix.Getpeername(fd)
		if errors.Is(err, unix.ENOTCONN) {
			if int(local.Port()) == in.listenPort && in.s.listensOn(local.Addr()) {
				listeners = append(listeners, fd)
			}
			continue
		}
		peerAddr, ok := sockAddr(remote, err)
		if !ok {
			continue
		}
		p, ok := in.peers[peerAddr.Addr()]
		if !ok || (int(local.Port()) != in.listenPort && peerAddr.Port() != cmp.Or(p.Port, 179)) {
			continue
		}
		if err := unix.Shutdown(fd, unix.SHUT_RDWR); err != nil && !errors.Is(err, unix.ENOTCONN) {
			errs = append(errs, fmt.Errorf("shut down connection to %s: %w", peerAddr, err))
			continue
		}
		closed++
	}
	for _, fd := range listeners {
		if err := unix.Shutdown(fd, unix.SHUT_RDWR); err != nil && !errors.Is(err, unix.ENOTCONN) {
			errs = append(errs, fmt.Errorf("shut down listener: %w", err))
		}
	}
	return closed, errors.Join(errs...)
}

// listensOn says whether a listening socket bound to a is one of the speaker's.
func (s *GoBGP) listensOn(a netip.Addr) bool {
	if len(s.opts.listenAddresses) == 0 {
		return a.IsUnspecified()
	}
	for _, l := range s.opts.listenAddresses {
		if l.Unmap() == a.Unmap() {
			return true
		}
	}
	return false
}

// isTCPSocket says whether fd is a TCP (or Multipath TCP) stream socket.
func isTCPSocket(fd int) bool {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil || typ != unix.SOCK_STREAM {
		return false
	}
	proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	return err == nil && (proto == unix.IPPROTO_TCP || proto == unix.IPPROTO_MPTCP)
}

func sockAddr(sa unix.Sockaddr, err error) (netip.AddrPort, bool) {
	if err != nil {
		return netip.AddrPort{}, false
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)), true
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port)), true
	}
	return netip.AddrPort{}, false
}
