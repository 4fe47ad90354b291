package netstack

import (
	"encoding/binary"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// ICMP errors from peers.
//
// An ICMP error (destination unreachable, packet too big, time exceeded,
// parameter problem, ...) quotes the start of a packet the stack sent, and
// gVisor applies it to the connection that packet belongs to: a port
// unreachable ends a UDP flow, a "fragmentation needed" lowers a TCP
// connection's segment size. The stack forwards in promiscuous mode, so
// every quoted flow is local to it, whoever sent the error. WireGuard
// only guarantees that an error's source address belongs to the peer that
// sent it. So before gVisor sees an ICMP error from a peer:
//
//   - the packet it quotes must have been sent to that same peer: its
//     destination (the peer's end of the flow) must belong to the peer the
//     error's source belongs to. Any peer could otherwise end or cripple
//     another peer's flows by sweeping their ports.
//   - "fragmentation needed" must announce at least 576 bytes (IPv4's
//     smallest reassembly size, RFC 791) and "packet too big" at least
//     1280 (IPv6's minimum MTU, RFC 8200): gVisor takes an MTU of 0 as a
//     1-byte segment size, and a flow that moves 256 KiB in 262,000
//     packets burns the connector's CPU for its peer alone.
//   - a peer gets ICMPRate errors a second on average, ICMPBurst at once,
//     like its echo requests: an error costs gVisor a flow lookup and the
//     flow a wake-up.
//
// A fragmented ICMP error is dropped too (errors are small enough never
// to need fragmenting, RFC 1812 and RFC 4443): gVisor would reassemble one
// before looking at it, and this check does not.

// ICMP error drop reasons, indexes into ICMPStats.ErrorsDropped.
const (
	ICMPErrorOtherPeer = iota // quotes a flow of another peer (or of no peer)
	ICMPErrorSmallMTU         // fragmentation needed / packet too big below the minimum MTU
	ICMPErrorRate             // over the peer's ICMP error rate
	ICMPErrorMalformed        // too short to quote a packet, or fragmented
	NumICMPErrorDrops
)

// ICMPErrorDropNames are the reasons' names, for metrics labels.
var ICMPErrorDropNames = [NumICMPErrorDrops]string{"other_peer", "small_mtu", "rate", "malformed"}

// Minimum MTUs an ICMP error may announce.
const (
	minPathMTU4 = 576
	minPathMTU6 = header.IPv6MinimumMTU
)

// icmpError is what inspection found in an inbound packet that is an ICMP
// error.
type icmpError struct {
	src       netip.Addr // the error's sender
	quotedDst netip.Addr // destination of the packet it quotes
	mtu       uint32     // announced MTU of fragmentation needed / packet too big
	hasMTU    bool
	malformed bool
}

// parseICMPError reports whether b, an inbound IP packet not yet parsed,
// is an ICMP error, and what it says. Packets gVisor would drop as
// malformed anyway (bad IP header lengths) are not errors here.
func parseICMPError(b []byte) (icmpError, bool) {
	var e icmpError
	if len(b) == 0 {
		return e, false
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < header.IPv4MinimumSize {
			return e, false
		}
		ip := header.IPv4(b)
		hl := int(ip.HeaderLength())
		if hl < header.IPv4MinimumSize || hl > len(b) || ip.Protocol() != uint8(header.ICMPv4ProtocolNumber) {
			return e, false
		}
		if tl := int(ip.TotalLength()); tl >= hl && tl < len(b) {
			b = b[:tl]
		}
		e.src = netip.AddrFrom4([4]byte(b[12:16]))
		if ip.FragmentOffset() != 0 {
			// A later fragment: its first fragment, which holds the
			// type, decided (and was dropped if it was an error).
			return e, false
		}
		msg := b[hl:]
		if len(msg) < 1 || !icmpv4Error(msg[0]) {
			return e, false
		}
		if ip.More() || len(msg) < echoHeaderSize+header.IPv4MinimumSize {
			e.malformed = true
			return e, true
		}
		quoted := msg[echoHeaderSize:]
		if quoted[0]>>4 != 4 {
			e.malformed = true
			return e, true
		}
		e.quotedDst = netip.AddrFrom4([4]byte(quoted[16:20]))
		if header.ICMPv4Type(msg[0]) == header.ICMPv4DstUnreachable && header.ICMPv4Code(msg[1]) == header.ICMPv4FragmentationNeeded {
			e.mtu, e.hasMTU = uint32(binary.BigEndian.Uint16(msg[6:8])), true
		}
		return e, true
	case 6:
		if len(b) < header.IPv6MinimumSize {
			return e, false
		}
		if pl := int(header.IPv6(b).PayloadLength()) + header.IPv6MinimumSize; pl < len(b) {
			b = b[:pl]
		}
		e.src = netip.AddrFrom16([16]byte(b[8:24]))
		next, off := b[6], header.IPv6MinimumSize
		fragmented := false
		// Walk the extension headers gVisor walks to reach ICMPv6.
		for {
			switch next {
			case uint8(header.ICMPv6ProtocolNumber):
			case 0, 43, 60: // hop-by-hop, routing, destination options
				if off+8 > len(b) {
					return e, false
				}
				next, off = b[off], off+8*(int(b[off+1])+1)
				continue
			case 44: // fragment
				if off+8 > len(b) {
					return e, false
				}
				if binary.BigEndian.Uint16(b[off+2:])>>3 != 0 {
					return e, false // a later fragment, as for IPv4
				}
				fragmented = true
				next, off = b[off], off+8
				continue
			default:
				return e, false
			}
			break
		}
		if off >= len(b) {
			// The first fragment does not reach the upper-layer header
			// (RFC 7112 says to drop it); whether it is ICMPv6 cannot
			// be told here, and gVisor drops such packets too.
			if fragmented {
				e.malformed = true
				return e, true
			}
			return e, false
		}
		msg := b[off:]
		if !icmpv6Error(msg[0]) {
			return e, false
		}
		if fragmented || len(msg) < echoHeaderSize+header.IPv6MinimumSize {
			e.malformed = true
			return e, true
		}
		quoted := msg[echoHeaderSize:]
		if quoted[0]>>4 != 6 {
			e.malformed = true
			return e, true
		}
		e.quotedDst = netip.AddrFrom16([16]byte(quoted[24:40]))
		if header.ICMPv6Type(msg[0]) == header.ICMPv6PacketTooBig {
			e.mtu, e.hasMTU = binary.BigEndian.Uint32(msg[4:8]), true
		}
		return e, true
	}
	return e, false
}

// icmpv4Error reports whether typ is an ICMPv4 error message type: one
// gVisor applies to the flow it quotes, or one it has no use for.
func icmpv4Error(typ byte) bool {
	switch header.ICMPv4Type(typ) {
	case header.ICMPv4DstUnreachable, header.ICMPv4SrcQuench, header.ICMPv4Redirect,
		header.ICMPv4TimeExceeded, header.ICMPv4ParamProblem:
		return true
	}
	return false
}

// icmpv6Error reports whether typ is an ICMPv6 error message (types 0-127,
// RFC 4443 section 2.1).
func icmpv6Error(typ byte) bool { return typ < 128 }

// screenICMPError decides whether pkt, an inbound packet from a peer, may
// reach gVisor, and counts it if not. Anything but an ICMP error passes.
func (s *Stack) screenICMPError(pkt *stack.PacketBuffer) bool {
	size := pkt.Data().Size()
	if size == 0 {
		return true
	}
	// Most packets are TCP or UDP: the fixed IP header says so without
	// pulling up more of the packet.
	if h, ok := pkt.Data().PullUp(min(size, header.IPv6MinimumSize)); ok && len(h) >= header.IPv4MinimumSize {
		switch {
		case h[0]>>4 == 4 && h[9] != uint8(header.ICMPv4ProtocolNumber):
			return true
		case h[0]>>4 == 6 && len(h) >= header.IPv6MinimumSize &&
			(h[6] == uint8(header.TCPProtocolNumber) || h[6] == uint8(header.UDPProtocolNumber)):
			return true
		}
	}
	// An error's interesting part is within its first 576 (IPv4) or
	// 1280 (IPv6) bytes; the rest is only quoted payload.
	n := min(size, header.IPv6MinimumMTU+header.IPv6MinimumSize)
	b, ok := pkt.Data().PullUp(n)
	if !ok {
		return true
	}
	e, isErr := parseICMPError(b)
	if !isErr {
		return true
	}
	reason := -1
	switch {
	case e.malformed:
		reason = ICMPErrorMalformed
	case !s.samePeer(e.src, e.quotedDst):
		reason = ICMPErrorOtherPeer
	case e.hasMTU && e.src.Is4() && e.mtu < minPathMTU4, e.hasMTU && e.src.Is6() && e.mtu < minPathMTU6:
		reason = ICMPErrorSmallMTU
	case !s.echoRates.Allow(s.peerOf(e.src), bucketICMPError):
		reason = ICMPErrorRate
	}
	if reason < 0 {
		return true
	}
	s.stats.icmpErrorsDropped[reason].Add(1)
	return false
}

// samePeer reports whether addresses a and b belong to one peer.
func (s *Stack) samePeer(a, b netip.Addr) bool {
	if !a.IsValid() || !b.IsValid() {
		return false
	}
	pa := s.peerOf(a)
	return pa != "" && pa == s.peerOf(b)
}
