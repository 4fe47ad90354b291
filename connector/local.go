package connector

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// hostHasAddr reports whether a is one of the host's own addresses now:
// it asks the kernel, which has the current addresses, not a list taken
// at start (an address added later would otherwise be learned from DNS and
// forwarded to, reaching services bound to the host's wildcard address).
//
// The question is the kernel's own: would it deliver a packet to a
// locally (a route of type RTN_LOCAL, as for each of its addresses and for
// a subnet assigned to loopback)? One RTM_GETROUTE request on a netlink
// socket answers it (BenchmarkHostHasAddr); no privilege is needed. Where netlink is not available it falls back to a UDP socket
// connected to a, whose source the kernel sets to a itself when a is local
// (RFC 6724 rule 1; Linux's output route for RTN_LOCAL).
func hostHasAddr(a netip.Addr) bool {
	a = a.Unmap()
	if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() || a.Zone() != "" {
		return false
	}
	if !netlinkBroken.Load() {
		local, err := routeIsLocal(a)
		if err == nil {
			return local
		}
		netlinkBroken.Store(true)
	}
	return sourceIsSelf(a)
}

// netlinkBroken is set once a netlink route request failed for a reason
// other than the address (no netlink in this sandbox, say).
var netlinkBroken atomic.Bool

// nlRoute is one netlink socket for route requests, kept open: opening
// one per request costs more than the request.
var nlRoute netlinkRoutes

type netlinkRoutes struct {
	mu  sync.Mutex
	fd  int
	ok  bool // fd is open
	seq uint32
	buf [4096]byte
}

// routeIsLocal asks the kernel for its route to a and reports whether the
// route is local.
func routeIsLocal(a netip.Addr) (bool, error) {
	nl := &nlRoute
	nl.mu.Lock()
	defer nl.mu.Unlock()
	if !nl.ok {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
		if err != nil {
			return false, err
		}
		// The kernel answers at once; never wait long for it.
		tv := unix.Timeval{Sec: 1}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return false, err
		}
		nl.fd, nl.ok = fd, true
	}
	local, err := nl.request(a)
	if err != nil {
		unix.Close(nl.fd)
		nl.ok = false
	}
	return local, err
}

// request sends one RTM_GETROUTE for a on nl's socket and reads its
// answer, skipping any left from an earlier request. nl.mu is held.
func (nl *netlinkRoutes) request(a netip.Addr) (bool, error) {
	family, dst := byte(unix.AF_INET6), a.AsSlice()
	if a.Is4() {
		family = unix.AF_INET
	}
	nl.seq++
	// nlmsghdr, rtmsg, one rtattr (RTA_DST) with the address.
	const hdrLen, rtmLen, attrLen = unix.SizeofNlMsghdr, unix.SizeofRtMsg, unix.SizeofRtAttr
	var req [hdrLen + rtmLen + attrLen + 16]byte
	n := hdrLen + rtmLen + attrLen + len(dst)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(n))
	ne.PutUint16(req[4:], unix.RTM_GETROUTE)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(req[8:], nl.seq)
	req[hdrLen] = family
	req[hdrLen+1] = byte(8 * len(dst)) // rtm_dst_len
	ne.PutUint16(req[hdrLen+rtmLen:], uint16(attrLen+len(dst)))
	ne.PutUint16(req[hdrLen+rtmLen+2:], unix.RTA_DST)
	copy(req[hdrLen+rtmLen+attrLen:], dst)
	if err := unix.Sendto(nl.fd, req[:n], 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return false, err
	}
	for {
		got, _, err := unix.Recvfrom(nl.fd, nl.buf[:], 0)
		if err != nil {
			return false, err
		}
		for b := nl.buf[:got]; len(b) >= hdrLen; {
			l := int(ne.Uint32(b[0:]))
			if l < hdrLen || l > len(b) {
				return false, errors.New("netlink: malformed reply")
			}
			msg := b[:l]
			b = b[(l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1):]
			if ne.Uint32(msg[8:]) != nl.seq {
				continue // an answer to an earlier, abandoned request
			}
			switch ne.Uint16(msg[4:]) {
			case unix.NLMSG_ERROR:
				// No route at all (unreachable, prohibited): not local.
				if len(msg) >= hdrLen+4 && int32(ne.Uint32(msg[hdrLen:])) != 0 {
					return false, nil
				}
				return false, errors.New("netlink: unexpected acknowledgment")
			case unix.RTM_NEWROUTE:
				if len(msg) < hdrLen+rtmLen {
					return false, errors.New("netlink: short route")
				}
				return msg[hdrLen+7] == unix.RTN_LOCAL, nil // rtm_type
			}
			return false, errors.New("netlink: unexpected reply")
		}
	}
}

// sourceIsSelf reports whether the kernel picks a itself as the source
// address for a UDP socket connected to a.
func sourceIsSelf(a netip.Addr) bool {
	family, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Port: 9, Addr: a.As16()})
	if a.Is4() {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: 9, Addr: a.As4()}
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, sa); err != nil {
		return false
	}
	local, err := unix.Getsockname(fd)
	if err != nil {
		return false
	}
	switch l := local.(type) {
	case *unix.SockaddrInet4:
		return a.Is4() && l.Addr == a.As4()
	case *unix.SockaddrInet6:
		return a.Is6() && l.Addr == a.As16()
	}
	return false
}
