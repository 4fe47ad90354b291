package tun

import (
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
)

// Offload in both directions keeps the stack's per-segment work off the
// data path.
//
// Outbound, the link endpoint offers host segmentation offload, so gVisor's
// TCP hands over one packet of up to offloadMaxSize bytes (with only the
// pseudo-header summed into the TCP checksum) where it would have built
// dozens of MTU-sized ones. Read cuts it into MTU-sized segments straight
// into WireGuard's buffers, fixing lengths, IPv4 IDs, sequence numbers,
// flags and checksums. Packets the stack did not mark are copied as they
// are.
//
// Inbound, Write passes each batch through gVisor's receive coalescing,
// which joins consecutive in-order segments of a TCP flow (after verifying
// their checksums) into one packet before the stack sees them.

// offloadMaxSize is the largest packet the stack may hand to the link
// endpoint with segmentation offload: the IPv4 total length limit.
const offloadMaxSize = 1<<16 - 1

var _ stack.GSOEndpoint = (*linkEndpoint)(nil)

// GSOMaxSize implements stack.GSOEndpoint.
func (l *linkEndpoint) GSOMaxSize() uint32 {
	if l.d.noOffload {
		return 0
	}
	return offloadMaxSize
}

// SupportedGSO implements stack.GSOEndpoint. "Host" offload tells the stack
// that whoever reads the link (Read) segments and completes checksums.
func (l *linkEndpoint) SupportedGSO() stack.SupportedGSO {
	if l.d.noOffload {
		return stack.GSONotSupported
	}
	return stack.HostGSOSupported
}

// offloaded reports whether pkt carries a TCP segmentation or checksum
// request that Read must carry out.
func offloaded(pkt *stack.PacketBuffer) bool {
	switch pkt.GSOOptions.Type {
	case stack.GSOTCPv4, stack.GSOTCPv6:
		return true
	}
	return false
}

// readAt copies pkt's bytes from offset off into dst and returns the
// number copied. It does not allocate.
func readAt(pkt *stack.PacketBuffer, dst []byte, off int) int {
	views, hdrOff := pkt.AsViewList()
	off += hdrOff
	n := 0
	for v := views.Front(); v != nil && n < len(dst); v = v.Next() {
		s := v.AsSlice()
		if off >= len(s) {
			off -= len(s)
			continue
		}
		n += copy(dst[n:], s[off:])
		off = 0
	}
	return n
}

// segmenter walks one offloaded TCP packet, emitting a segment per call.
type segmenter struct {
	pkt    *stack.PacketBuffer
	ipLen  int // network header length
	hdrLen int // network + TCP header length
	mss    int // payload bytes per segment
	next   int // payload offset of the next segment
	total  int // payload length
	index  int // number of segments emitted so far
}

// start prepares s for pkt, an offloaded packet from the stack, which may
// carry at most mtu bytes per segment. It reports false if the packet's
// headers are not what the stack promised.
func (s *segmenter) start(pkt *stack.PacketBuffer, mtu int) bool {
	ipLen := len(pkt.NetworkHeader().Slice())
	tcpLen := len(pkt.TransportHeader().Slice())
	if ipLen == 0 || tcpLen < header.TCPMinimumSize {
		return false
	}
	hdrLen := ipLen + tcpLen
	mss := int(pkt.GSOOptions.MSS)
	if mss <= 0 || mss > mtu-hdrLen {
		mss = mtu - hdrLen
	}
	if mss <= 0 {
		return false
	}
	*s = segmenter{pkt: pkt, ipLen: ipLen, hdrLen: hdrLen, mss: mss, total: pkt.Size() - hdrLen}
	return true
}

// done reports whether every segment has been emitted.
func (s *segmenter) done() bool { return s.index > 0 && s.next >= s.total }

// release drops the packet and resets s.
func (s *segmenter) release() {
	s.pkt.DecRef()
	*s = segmenter{}
}

// emit writes the next segment into b, which must hold at least
// hdrLen+mss bytes, and returns its length.
func (s *segmenter) emit(b []byte) int {
	n := min(s.mss, s.total-s.next)
	seg := b[:s.hdrLen+n]
	readAt(s.pkt, seg[:s.hdrLen], 0)
	readAt(s.pkt, seg[s.hdrLen:], s.hdrLen+s.next)

	var src, dst tcpip.Address
	if s.pkt.GSOOptions.Type == stack.GSOTCPv4 {
		ip := header.IPv4(seg)
		ip.SetTotalLength(uint16(len(seg)))
		ip.SetID(ip.ID() + uint16(s.index))
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	} else {
		ip := header.IPv6(seg)
		ip.SetPayloadLength(uint16(len(seg) - header.IPv6MinimumSize))
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	}
	tcp := header.TCP(seg[s.ipLen:])
	tcp.SetSequenceNumber(tcp.SequenceNumber() + uint32(s.next))
	flags := tcp.Flags()
	if s.next+n < s.total {
		flags &^= header.TCPFlagFin | header.TCPFlagPsh
	}
	if s.index > 0 {
		flags &^= header.TCPFlagCwr
	}
	tcp.SetFlags(uint8(flags))
	tcp.SetChecksum(0)
	sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(tcp)))
	tcp.SetChecksum(^checksum.Checksum(tcp, sum))

	s.next += n
	s.index++
	return len(seg)
}

// coalescer is gVisor's receive coalescing with a count of the packets it
// has passed on, which flush needs.
type coalescer struct {
	gro       gro.GRO
	disp      stack.NetworkDispatcher
	delivered int
}

// coalescers holds idle coalescers; each Write takes its own, so peers
// writing concurrently do not contend.
var coalescers = sync.Pool{New: func() any {
	c := new(coalescer)
	c.gro.Init(true)
	c.gro.Dispatcher = c
	return c
}}

// DeliverNetworkPacket implements stack.NetworkDispatcher.
func (c *coalescer) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	c.delivered++
	c.disp.DeliverNetworkPacket(proto, pkt)
}

// DeliverLinkPacket implements stack.NetworkDispatcher.
func (c *coalescer) DeliverLinkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	c.disp.DeliverLinkPacket(proto, pkt)
}

// flush delivers every packet still held. In the gVisor version this
// module uses, one GRO.Flush delivers only the first packet of each bucket
// (removing a packet clears the list links the loop follows), so it is
// repeated until a round delivers nothing.
func (c *coalescer) flush() {
	for {
		before := c.delivered
		c.gro.Flush()
		if c.delivered == before {
			return
		}
	}
}
