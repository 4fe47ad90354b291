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

// Peers of the fuzz target: A holds 10.8.0.2 and fd08::2, B 10.8.0.3 and
// fd08::3; any other address is a peer of its own.
func fuzzPeerOf(a netip.Addr) string {
	switch a {
	case netip.MustParseAddr("10.8.0.2"), netip.MustParseAddr("fd08::2"):
		return "A"
	case netip.MustParseAddr("10.8.0.3"), netip.MustParseAddr("fd08::3"):
		return "B"
	}
	return a.String()
}

// icmpErrorFrom builds an ICMP error (type typ, code, 4-byte rest) from src
// quoting a UDP packet from qsrc to qdst.
func icmpErrorFrom(src, qsrc, qdst netip.Addr, typ, code byte, rest uint32) []byte {
	var quote []byte
	if qsrc.Is4() {
		quote = make([]byte, header.IPv4MinimumSize+8)
		header.IPv4(quote).Encode(&header.IPv4Fields{TotalLength: 100, TTL: 64, Protocol: uint8(header.UDPProtocolNumber),
			SrcAddr: tcpipAddr(qsrc), DstAddr: tcpipAddr(qdst)})
	} else {
		quote = make([]byte, header.IPv6MinimumSize+8)
		header.IPv6(quote).Encode(&header.IPv6Fields{PayloadLength: 100, TransportProtocol: header.UDPProtocolNumber, HopLimit: 64,
			SrcAddr: tcpipAddr(qsrc), DstAddr: tcpipAddr(qdst)})
	}
	msg := append([]byte{typ, code, 0, 0, 0, 0, 0, 0}, quote...)
	binary.BigEndian.PutUint32(msg[4:], rest)
	if src.Is4() {
		binary.BigEndian.PutUint16(msg[2:], ^checksum.Checksum(msg, 0))
		b := make([]byte, header.IPv4MinimumSize, header.IPv4MinimumSize+len(msg))
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b) + len(msg)), TTL: 64, Protocol: uint8(header.ICMPv4ProtocolNumber),
			SrcAddr: tcpipAddr(src), DstAddr: tcpipAddr(qsrc)})
		ip.SetChecksum(^ip.CalculateChecksum())
		return append(b, msg...)
	}
	b := make([]byte, header.IPv6MinimumSize, header.IPv6MinimumSize+len(msg))
	header.IPv6(b).Encode(&header.IPv6Fields{PayloadLength: uint16(len(msg)), TransportProtocol: header.ICMPv6ProtocolNumber, HopLimit: 64,
		SrcAddr: tcpipAddr(src), DstAddr: tcpipAddr(qsrc)})
	return append(b, msg...)
}

// FuzzICMPErrorScreen feeds arbitrary packets to the ICMP error screen.
// Nothing may panic, and whenever gVisor's own parsers (the ones its
// network layer uses before it applies an error to a flow) read the
// packet as an ICMP error quoting a packet sent to a peer other than the
// error's sender, the screen must keep it from the stack.
//
//	go test ./netstack -run X -fuzz FuzzICMPErrorScreen -fuzztime 60s
func FuzzICMPErrorScreen(f *testing.F) {
	a4, b4, up4 := netip.MustParseAddr("10.8.0.2"), netip.MustParseAddr("10.8.0.3"), netip.MustParseAddr("192.0.2.1")
	a6, b6, up6 := netip.MustParseAddr("fd08::2"), netip.MustParseAddr("fd08::3"), netip.MustParseAddr("2001:db8::1")
	f.Add(icmpErrorFrom(a4, up4, b4, byte(header.ICMPv4DstUnreachable), byte(header.ICMPv4PortUnreachable), 0))
	f.Add(icmpErrorFrom(a4, up4, a4, byte(header.ICMPv4DstUnreachable), byte(header.ICMPv4FragmentationNeeded), 0))
	f.Add(icmpErrorFrom(b4, up4, b4, byte(header.ICMPv4TimeExceeded), 0, 0))
	f.Add(icmpErrorFrom(a6, up6, b6, byte(header.ICMPv6DstUnreachable), byte(header.ICMPv6PortUnreachable), 0))
	f.Add(icmpErrorFrom(a6, up6, a6, byte(header.ICMPv6PacketTooBig), 0, 1000))
	f.Add(icmpErrorFrom(b6, up6, b6, byte(header.ICMPv6ParamProblem), 0, 0))
	f.Add([]byte{0x45})

	s := &Stack{cfg: Config{PeerOf: fuzzPeerOf}}
	s.echoRates = NewPeerRates(numBuckets, 1e12, 1<<30) // the rate is not what is fuzzed
	f.Fuzz(func(t *testing.T, b []byte) {
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
		defer pkt.DecRef()
		passed := s.screenICMPError(pkt)
		src, quotedDst, ok := gvisorReadsError(b)
		if ok && passed && fuzzPeerOf(src) != fuzzPeerOf(quotedDst) {
			t.Fatalf("an error from %v quoting a packet to %v (another peer) passed: %x", src, quotedDst, b)
		}
	})
}

// gvisorReadsError parses b as gVisor's network layer does on the way to
// applying an ICMP error to a flow (an unfragmented packet, ICMPv6
// directly after the fixed header), and returns the error's source and the
// quoted packet's destination.
func gvisorReadsError(b []byte) (src, quotedDst netip.Addr, ok bool) {
	if len(b) == 0 {
		return
	}
	switch b[0] >> 4 {
	case 4:
		ip := header.IPv4(b)
		if !ip.IsValid(len(b)) || ip.Protocol() != uint8(header.ICMPv4ProtocolNumber) || ip.More() || ip.FragmentOffset() != 0 {
			return
		}
		msg := b[ip.HeaderLength():ip.TotalLength()]
		if len(msg) < header.ICMPv4MinimumSize || !icmpv4Error(msg[0]) {
			return
		}
		q := header.IPv4(msg[header.ICMPv4MinimumSize:])
		if len(q) < header.IPv4MinimumSize {
			return
		}
		return addrFrom(ip.SourceAddress()), addrFrom(q.DestinationAddress()), true
	case 6:
		ip := header.IPv6(b)
		if !ip.IsValid(len(b)) || ip.NextHeader() != uint8(header.ICMPv6ProtocolNumber) {
			return
		}
		msg := b[header.IPv6MinimumSize : header.IPv6MinimumSize+int(ip.PayloadLength())]
		if len(msg) < header.ICMPv6MinimumSize || !icmpv6Error(msg[0]) {
			return
		}
		q := header.IPv6(msg[header.ICMPv6MinimumSize:])
		if len(q) < header.IPv6MinimumSize {
			return
		}
		return addrFrom(ip.SourceAddress()), addrFrom(q.DestinationAddress()), true
	}
	return
}

func TestICMPErrorScreenSeeds(t *testing.T) {
	s := &Stack{cfg: Config{PeerOf: fuzzPeerOf}}
	s.echoRates = NewPeerRates(numBuckets, 1e12, 1<<30)
	a4, b4, up4 := netip.MustParseAddr("10.8.0.2"), netip.MustParseAddr("10.8.0.3"), netip.MustParseAddr("192.0.2.1")
	a6, b6, up6 := netip.MustParseAddr("fd08::2"), netip.MustParseAddr("fd08::3"), netip.MustParseAddr("2001:db8::1")
	for _, tc := range []struct {
		name string
		pkt  []byte
		pass bool
	}{
		{"v4 port unreachable about another peer", icmpErrorFrom(a4, up4, b4, 3, 3, 0), false},
		{"v4 port unreachable about its own flow", icmpErrorFrom(a4, up4, a4, 3, 3, 0), true},
		{"v4 fragmentation needed, MTU 0", icmpErrorFrom(a4, up4, a4, 3, 4, 0), false},
		{"v4 fragmentation needed, MTU 575", icmpErrorFrom(a4, up4, a4, 3, 4, 575), false},
		{"v4 fragmentation needed, MTU 576", icmpErrorFrom(a4, up4, a4, 3, 4, 576), true},
		{"v4 time exceeded about another peer", icmpErrorFrom(b4, up4, a4, 11, 0, 0), false},
		{"v4 echo request", netstackEcho(a4, up4), true},
		{"v6 port unreachable about another peer", icmpErrorFrom(a6, up6, b6, 1, 4, 0), false},
		{"v6 packet too big, 1279", icmpErrorFrom(a6, up6, a6, 2, 0, 1279), false},
		{"v6 packet too big, 1280", icmpErrorFrom(a6, up6, a6, 2, 0, 1280), true},
		{"v6 from no peer about its own address", icmpErrorFrom(up6, up6, up6, 1, 4, 0), true},
		{"v4 error quoting an IPv6 packet", icmpErrorFrom(a4, up6, a6, 3, 3, 0), false},
	} {
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(tc.pkt)})
		if got := s.screenICMPError(pkt); got != tc.pass {
			t.Errorf("%s: passed %v, want %v", tc.name, got, tc.pass)
		}
		pkt.DecRef()
	}
	// Fragmented: the first fragment of an error is dropped, a later one
	// (no ICMP header in it) passes.
	frag := icmpErrorFrom(a4, up4, a4, 3, 3, 0)
	header.IPv4(frag).SetFlagsFragmentOffset(header.IPv4FlagMoreFragments, 0)
	later := append([]byte(nil), frag...)
	header.IPv4(later).SetFlagsFragmentOffset(0, 64)
	for _, tc := range []struct {
		name string
		pkt  []byte
		pass bool
	}{{"first fragment of an error", frag, false}, {"later fragment", later, true}} {
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(tc.pkt)})
		if got := s.screenICMPError(pkt); got != tc.pass {
			t.Errorf("%s: passed %v, want %v", tc.name, got, tc.pass)
		}
		pkt.DecRef()
	}
}

// netstackEcho is an IPv4 echo request from src to dst.
func netstackEcho(src, dst netip.Addr) []byte {
	b := icmpErrorFrom(src, dst, src, byte(header.ICMPv4Echo), 0, 0)
	return b
}

func tcpipAddr(a netip.Addr) tcpip.Address { return tcpip.AddrFromSlice(a.AsSlice()) }
