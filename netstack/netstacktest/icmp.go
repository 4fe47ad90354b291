package netstacktest

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// EchoRequest builds a complete IPv4 or IPv6 packet (by the family of
// src and dst) holding an ICMP echo request with valid checksums, as a
// peer's ping sends it.
func EchoRequest(src, dst netip.Addr, ident, seq uint16, payload []byte) []byte {
	typ := byte(header.ICMPv4Echo)
	if src.Is6() {
		typ = byte(header.ICMPv6EchoRequest)
	}
	msg := make([]byte, 8+len(payload))
	msg[0] = typ
	header.ICMPv4(msg).SetIdent(ident) // same offsets in ICMPv6
	header.ICMPv4(msg).SetSequence(seq)
	copy(msg[8:], payload)
	return ICMPPacket(src, dst, msg)
}

// ICMPPacket wraps the ICMP message msg (its checksum is computed here)
// in an IPv4 or IPv6 header from src to dst with TTL 64.
func ICMPPacket(src, dst netip.Addr, msg []byte) []byte {
	msg = append([]byte(nil), msg...)
	s, d := tcpip.AddrFromSlice(src.AsSlice()), tcpip.AddrFromSlice(dst.AsSlice())
	if src.Is4() {
		ih := header.ICMPv4(msg)
		ih.SetChecksum(0)
		ih.SetChecksum(^checksum.Checksum(msg, 0))
		pkt := make([]byte, header.IPv4MinimumSize, header.IPv4MinimumSize+len(msg))
		ip := header.IPv4(pkt)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(header.IPv4MinimumSize + len(msg)),
			TTL:         64,
			Protocol:    uint8(header.ICMPv4ProtocolNumber),
			SrcAddr:     s,
			DstAddr:     d,
		})
		ip.SetChecksum(^ip.CalculateChecksum())
		return append(pkt, msg...)
	}
	ih := header.ICMPv6(msg)
	ih.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
		Header: ih[:8], Src: s, Dst: d, PayloadCsum: checksum.Checksum(msg[8:], 0), PayloadLen: len(msg) - 8,
	}))
	pkt := make([]byte, header.IPv6MinimumSize, header.IPv6MinimumSize+len(msg))
	header.IPv6(pkt).Encode(&header.IPv6Fields{
		PayloadLength:     uint16(len(msg)),
		TransportProtocol: header.ICMPv6ProtocolNumber,
		HopLimit:          64,
		SrcAddr:           s,
		DstAddr:           d,
	})
	return append(pkt, msg...)
}

// ICMP is a parsed ICMP (v4 or v6) packet.
type ICMP struct {
	Src, Dst   netip.Addr
	Type, Code uint8
	// Ident and Seq are the echo identifier and sequence number (bytes
	// 4-7 of the message, whatever its type).
	Ident, Seq uint16
	// Body is what follows the 8-byte header: an echo's payload, or an
	// error's quote of the packet that caused it.
	Body []byte
	// ChecksumOK reports whether the ICMP checksum verifies.
	ChecksumOK bool
}

// ParseICMP parses an IPv4 or IPv6 packet holding an ICMP message (IPv6
// without extension headers; IPv4 not fragmented). The result refers to
// pkt's memory.
func ParseICMP(pkt []byte) (ICMP, bool) {
	var m ICMP
	if len(pkt) < 1 {
		return m, false
	}
	var msg []byte
	var s, d tcpip.Address
	switch pkt[0] >> 4 {
	case 4:
		ip := header.IPv4(pkt)
		if !ip.IsValid(len(pkt)) || ip.Protocol() != uint8(header.ICMPv4ProtocolNumber) || ip.More() || ip.FragmentOffset() != 0 {
			return m, false
		}
		msg = pkt[ip.HeaderLength():ip.TotalLength()]
		s, d = ip.SourceAddress(), ip.DestinationAddress()
		if len(msg) >= 8 {
			m.ChecksumOK = checksum.Checksum(msg, 0) == 0xffff
		}
	case 6:
		ip := header.IPv6(pkt)
		if !ip.IsValid(len(pkt)) || ip.NextHeader() != uint8(header.ICMPv6ProtocolNumber) {
			return m, false
		}
		msg = pkt[header.IPv6MinimumSize : header.IPv6MinimumSize+int(ip.PayloadLength())]
		s, d = ip.SourceAddress(), ip.DestinationAddress()
		if len(msg) >= 8 {
			m.ChecksumOK = header.ICMPv6(msg).Checksum() == header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
				Header: msg[:8], Src: s, Dst: d, PayloadCsum: checksum.Checksum(msg[8:], 0), PayloadLen: len(msg) - 8,
			})
		}
	default:
		return m, false
	}
	if len(msg) < 8 {
		return m, false
	}
	m.Src, _ = netip.AddrFromSlice(s.AsSlice())
	m.Dst, _ = netip.AddrFromSlice(d.AsSlice())
	m.Type, m.Code = msg[0], msg[1]
	m.Ident, m.Seq = header.ICMPv4(msg).Ident(), header.ICMPv4(msg).Sequence()
	m.Body = msg[8:]
	return m, true
}
