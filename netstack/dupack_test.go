package netstack

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// ackSegment is a TCP segment from a peer for dupAckWindows to look at.
type ackSegment struct {
	src, dst netip.AddrPort
	ack      uint32
	win      uint16
	flags    header.TCPFlags
	sack     bool // carry a SACK block option: 1,000 bytes from ack+1,000
	dsack    bool // carry a D-SACK block instead: the 1,000 bytes below ack
	payload  int
}

// packet builds seg as an IP packet with valid checksums.
func (seg ackSegment) packet() []byte {
	var opts []byte
	if seg.sack || seg.dsack {
		// NOP, NOP, SACK with one block.
		opts = []byte{1, 1, 5, 10, 0, 0, 0, 0, 0, 0, 0, 0}
		start := seg.ack + 1000
		if seg.dsack {
			start = seg.ack - 1000
		}
		binary.BigEndian.PutUint32(opts[4:], start)
		binary.BigEndian.PutUint32(opts[8:], start+1000)
	}
	tcpLen := header.TCPMinimumSize + len(opts)
	ipLen := header.IPv4MinimumSize
	if seg.src.Addr().Is6() {
		ipLen = header.IPv6MinimumSize
	}
	b := make([]byte, ipLen+tcpLen+seg.payload)
	src, dst := tcpip.AddrFromSlice(seg.src.Addr().AsSlice()), tcpip.AddrFromSlice(seg.dst.Addr().AsSlice())
	if seg.src.Addr().Is4() {
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: src, DstAddr: dst})
		ip.SetChecksum(^ip.CalculateChecksum())
	} else {
		header.IPv6(b).Encode(&header.IPv6Fields{PayloadLength: uint16(tcpLen + seg.payload), TransportProtocol: header.TCPProtocolNumber, HopLimit: 64, SrcAddr: src, DstAddr: dst})
	}
	t := header.TCP(b[ipLen:])
	t.Encode(&header.TCPFields{SrcPort: seg.src.Port(), DstPort: seg.dst.Port(), SeqNum: 1, AckNum: seg.ack,
		DataOffset: uint8(tcpLen), Flags: seg.flags, WindowSize: seg.win})
	copy(t[header.TCPMinimumSize:], opts)
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(tcpLen+seg.payload))
	t.SetChecksum(^checksum.Checksum(t, xsum))
	return b
}

// tcpOf returns b's TCP header and whether its checksum verifies.
func tcpOf(b []byte) (header.TCP, bool) {
	var src, dst tcpip.Address
	var t header.TCP
	if b[0]>>4 == 4 {
		ip := header.IPv4(b)
		src, dst, t = ip.SourceAddress(), ip.DestinationAddress(), header.TCP(b[ip.HeaderLength():])
	} else {
		ip := header.IPv6(b)
		src, dst, t = ip.SourceAddress(), ip.DestinationAddress(), header.TCP(b[header.IPv6MinimumSize:])
	}
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(t)))
	return t, checksum.Checksum(t, xsum) == 0xffff
}

func TestDupAckWindows(t *testing.T) {
	for _, fam := range []struct{ peer, dst, other string }{
		{"10.66.0.2:40000", "192.0.2.10:443", "10.66.0.3:40000"},
		{"[fd00::2]:40000", "[2001:db8::10]:443", "[fd00::3]:40000"},
	} {
		peer, dst, other := netip.MustParseAddrPort(fam.peer), netip.MustParseAddrPort(fam.dst), netip.MustParseAddrPort(fam.other)
		ack := func(ack uint32, win uint16, sack bool) ackSegment {
			return ackSegment{src: peer, dst: dst, ack: ack, win: win, flags: header.TCPFlagAck, sack: sack}
		}
		steps := []struct {
			name string
			seg  ackSegment
			want uint16 // the window delivered
		}{
			{"first ACK", ack(1000, 500, false), 500},
			{"duplicate with SACK and a larger window", ack(1000, 520, true), 500},
			{"the next one, larger again", ack(1000, 540, true), 500},
			{"duplicate with a smaller window", ack(1000, 480, true), 480},
			{"larger than that", ack(1000, 600, true), 480},
			{"a larger window without SACK (a window update)", ack(1000, 700, false), 700},
			{"new data acknowledged", ack(5000, 800, true), 800},
			{"duplicate of that", ack(5000, 900, true), 800},
			{"another flow of the peer's, same numbers", ackSegment{src: other, dst: dst, ack: 5000, win: 900, flags: header.TCPFlagAck, sack: true}, 900},
			{"a FIN", ackSegment{src: peer, dst: dst, ack: 5000, win: 950, flags: header.TCPFlagAck | header.TCPFlagFin, sack: true}, 950},
			{"data", ackSegment{src: peer, dst: dst, ack: 5000, win: 960, flags: header.TCPFlagAck, sack: true, payload: 100}, 960},
			{"still held after those", ack(5000, 990, true), 800},
			{"opened wide", ack(5000, 1001, true), 1001},
			{"zero window", ack(9000, 0, false), 0},
			{"a zero window is never held", ack(9000, 400, true), 400},
			{"a quarter more", ack(9000, 500, true), 400},
			{"a D-SACK (answering a retransmission)", ackSegment{src: peer, dst: dst, ack: 9000, win: 480, flags: header.TCPFlagAck, dsack: true}, 480},
		}
		d := newDupAckWindows()
		held := 0
		for _, st := range steps {
			b := st.seg.packet()
			pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
			changed := d.inspect(pkt)
			out := pkt.ToView().AsSlice()
			pkt.DecRef()
			tcp, ok := tcpOf(out)
			if !ok {
				t.Errorf("%v %s: checksum does not verify", peer, st.name)
			}
			if got := tcp.WindowSize(); got != st.want {
				t.Errorf("%v %s: window %d delivered, want %d", peer, st.name, got, st.want)
			}
			if changed != (st.want != st.seg.win) {
				t.Errorf("%v %s: inspect reported %v", peer, st.name, changed)
			}
			if changed {
				held++
			}
		}
		if held != 6 {
			t.Errorf("%v: %d windows held, want 6", peer, held)
		}
	}
}

func TestSacksAbove(t *testing.T) {
	const ack = 1 << 31
	for _, c := range []struct {
		opts []byte
		want bool
	}{
		{nil, false},
		{[]byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}, false}, // timestamps
		{[]byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 1, 1, 5, 10, 0x80, 0, 0x10, 0, 0x80, 0, 0x20, 0}, true},
		{[]byte{5, 10, 0x7f, 0, 0, 0, 0x7f, 0, 0x10, 0}, false},                                    // D-SACK only
		{[]byte{5, 18, 0x7f, 0, 0, 0, 0x7f, 0, 0x10, 0, 0x80, 0, 0x10, 0, 0x80, 0, 0x20, 0}, true}, // D-SACK, then SACK
		{[]byte{5, 10, 0x80, 0, 0, 0}, false},                                                      // truncated block
		{[]byte{0, 5, 10}, false},                                                                  // EOL first
		{[]byte{8, 0, 5, 10}, false},                                                               // a zero length would loop
		{[]byte{8}, false},                                                                         // truncated
	} {
		if got := sacksAbove(c.opts, ack); got != c.want {
			t.Errorf("sacksAbove(%v) = %v, want %v", c.opts, got, c.want)
		}
	}
}
