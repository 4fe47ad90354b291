package netstack

import (
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/nested"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// twRecycler sits between the tun.Device's link endpoint and the stack.
// Everything passes through it unchanged; before it delivers a new SYN
// (no ACK, no RST) for a 4-tuple whose previous connection is still in
// TIME-WAIT, it ends that connection, so the SYN reaches the TCP
// forwarder as a new flow.
//
// Without it such a SYN is swallowed: gVisor hands a SYN that arrives in
// TIME-WAIT to a listener on the port, never to a forwarder, and the
// peer's connection sits out a SYN retransmission (1 s) or the whole
// TIME-WAIT. Peers pick ports with no knowledge of our TIME-WAIT, so a
// busy peer hits this regularly: at 2,500 connections per second and a
// 50 ms TIME-WAIT, about one connection in 200 from a random-port picker.
//
// Ending the old connection sends it a RST (gVisor's Abort does), whose
// ACK field is the old connection's: a peer in SYN-SENT drops it as
// unacceptable (RFC 9293 section 3.10.7.3), and Linux answers it with an
// immediate SYN retransmission. The new SYN is delivered right after, so
// the forwarder answers it without waiting for that.
//
// It also keeps ICMP errors that a peer may not send from the stack
// (icmperr.go), and hands every inbound packet to dupAckWindows
// (dupack.go).
type twRecycler struct {
	nested.Endpoint
	s      *Stack
	dupAck *dupAckWindows
}

func newTWRecycler(child stack.LinkEndpoint, s *Stack) *twRecycler {
	r := &twRecycler{s: s, dupAck: newDupAckWindows()}
	r.Init(child, r)
	return r
}

// DeliverNetworkPacket implements stack.NetworkDispatcher.
func (r *twRecycler) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	if !r.s.screenICMPError(pkt) {
		return
	}
	if netProto, id, ok := newSYN(pkt); ok {
		r.s.recycleTimeWait(netProto, id)
	} else if r.dupAck.inspect(pkt) {
		r.s.stats.dupAckWindows.Add(1)
	}
	r.Endpoint.DeliverNetworkPacket(proto, pkt)
}

// newSYN reports whether pkt, an IP packet not yet parsed, is a TCP
// segment with SYN set and ACK and RST clear, and returns its 4-tuple as
// the endpoint ID it would be delivered to. Fragments, IPv6 packets with
// extension headers before TCP, and SYNs with data are not looked at.
func newSYN(pkt *stack.PacketBuffer) (tcpip.NetworkProtocolNumber, stack.TransportEndpointID, bool) {
	var id stack.TransportEndpointID
	// A SYN carries headers only (data on a SYN, TCP Fast Open, is not
	// looked at): anything longer than the longest IP header and the
	// longest TCP header is not one, and costs no more than this.
	if pkt.Data().Size() > header.IPv4MaximumHeaderSize+header.TCPHeaderMaximumSize {
		return 0, id, false
	}
	b, ok := pkt.Data().PullUp(1)
	if !ok {
		return 0, id, false
	}
	var netProto tcpip.NetworkProtocolNumber
	var tcpOff int
	switch b[0] >> 4 {
	case 4:
		b, ok = pkt.Data().PullUp(header.IPv4MinimumSize)
		if !ok {
			return 0, id, false
		}
		ip := header.IPv4(b)
		if ip.Protocol() != uint8(tcp.ProtocolNumber) || ip.More() || ip.FragmentOffset() != 0 {
			return 0, id, false
		}
		netProto, tcpOff = header.IPv4ProtocolNumber, int(ip.HeaderLength())
		if tcpOff < header.IPv4MinimumSize {
			return 0, id, false
		}
	case 6:
		b, ok = pkt.Data().PullUp(header.IPv6MinimumSize)
		if !ok || header.IPv6(b).NextHeader() != uint8(tcp.ProtocolNumber) {
			return 0, id, false
		}
		netProto, tcpOff = header.IPv6ProtocolNumber, header.IPv6MinimumSize
	default:
		return 0, id, false
	}
	b, ok = pkt.Data().PullUp(tcpOff + header.TCPMinimumSize)
	if !ok {
		return 0, id, false
	}
	t := header.TCP(b[tcpOff:])
	if f := t.Flags(); !f.Contains(header.TCPFlagSyn) || f.Intersects(header.TCPFlagAck|header.TCPFlagRst) {
		return 0, id, false
	}
	if netProto == header.IPv4ProtocolNumber {
		ip := header.IPv4(b)
		id.LocalAddress, id.RemoteAddress = ip.DestinationAddress(), ip.SourceAddress()
	} else {
		ip := header.IPv6(b)
		id.LocalAddress, id.RemoteAddress = ip.DestinationAddress(), ip.SourceAddress()
	}
	id.LocalPort, id.RemotePort = t.DestinationPort(), t.SourcePort()
	return netProto, id, true
}

// recycleTimeWait ends the connection with exactly id if it is in
// TIME-WAIT.
func (s *Stack) recycleTimeWait(netProto tcpip.NetworkProtocolNumber, id stack.TransportEndpointID) {
	ep, ok := s.stack.FindTransportEndpoint(netProto, tcp.ProtocolNumber, id, nicID).(*tcp.Endpoint)
	if !ok || ep.EndpointState() != tcp.StateTimeWait {
		return
	}
	ep.Abort()
	s.stats.timeWaitRecycled.Add(1)
}
