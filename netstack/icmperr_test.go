package netstack_test

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/appconnector/appconnector/netstack"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// Two peers share the gateway: B is the pair's client stack; A, another
// peer, can only inject packets from its own addresses (as WireGuard
// guarantees), which the tests do through the client's raw writes.
var (
	peerAV4 = netip.MustParseAddr("10.77.0.3")
	peerAV6 = netip.MustParseAddr("fd77::3")
)

// twoPeers maps the pair's client addresses to peer "B" and A's to "A".
func twoPeers(a netip.Addr) string {
	switch a {
	case clientV4.Addr(), clientV6.Addr():
		return "B"
	case peerAV4, peerAV6:
		return "A"
	}
	return a.String()
}

// quotedError builds the ICMP error from src about a packet the gateway
// sent from flowSrc to flowDst (proto UDP or TCP, first 8 transport
// bytes: the ports, then zeros): IPv4 destination unreachable with code
// and, for code 4, mtu; IPv6 (by family) code maps 3 to destination
// unreachable/port unreachable (4) and 4 to packet too big with mtu.
func quotedError(src netip.Addr, flowSrc, flowDst netip.AddrPort, proto uint8, code uint8, mtu uint32) []byte {
	var quote []byte
	if src.Is4() {
		quote = make([]byte, header.IPv4MinimumSize+8)
		header.IPv4(quote).Encode(&header.IPv4Fields{TotalLength: 1000, TTL: 64, Protocol: proto,
			SrcAddr: addrOf(flowSrc.Addr()), DstAddr: addrOf(flowDst.Addr())})
	} else {
		quote = make([]byte, header.IPv6MinimumSize+8)
		header.IPv6(quote).Encode(&header.IPv6Fields{PayloadLength: 1000, TransportProtocol: header.TCPProtocolNumber,
			HopLimit: 64, SrcAddr: addrOf(flowSrc.Addr()), DstAddr: addrOf(flowDst.Addr())})
		quote[6] = proto
	}
	t := quote[len(quote)-8:]
	binary.BigEndian.PutUint16(t[0:], flowSrc.Port())
	binary.BigEndian.PutUint16(t[2:], flowDst.Port())
	msg := make([]byte, 8, 8+len(quote))
	switch {
	case src.Is4():
		msg[0], msg[1] = byte(header.ICMPv4DstUnreachable), code
		binary.BigEndian.PutUint16(msg[6:], uint16(mtu))
	case code == 4:
		msg[0] = byte(header.ICMPv6PacketTooBig)
		binary.BigEndian.PutUint32(msg[4:], mtu)
	default:
		msg[0], msg[1] = byte(header.ICMPv6DstUnreachable), byte(header.ICMPv6PortUnreachable)
	}
	return netstacktest.ICMPPacket(src, flowSrc.Addr(), append(msg, quote...))
}

// A peer's forged port unreachable for another peer's UDP flow must not
// end it; the other peer's own does.
func TestICMPErrorFromOtherPeerSparesUDPFlow(t *testing.T) {
	netstacktest.CheckLeaks(t)
	for _, tc := range []struct {
		name, listen string
		a            netip.Addr
	}{{"ipv4", "127.0.0.1:0", peerAV4}, {"ipv6", "[::1]:0", peerAV6}} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t, netstack.Config{Allow: allowLoopback, PeerOf: twoPeers})
			up := netstacktest.UDPEcho(t, tc.listen).Addr
			c, err := p.client.DialContext(ctxTimeout(t, 5*time.Second), "udp", up.String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			b := c.LocalAddr().(*net.UDPAddr).AddrPort()
			exchange := func(what string) {
				t.Helper()
				if _, err := c.Write([]byte(what)); err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Read(make([]byte, 100)); err != nil {
					t.Fatalf("%s: %v", what, err)
				}
			}
			exchange("before")
			// A sweeps the ports around B's: every one a port
			// unreachable for a flow that is B's.
			for port := b.Port() - 50; port != b.Port()+50; port++ {
				dst := netip.AddrPortFrom(b.Addr(), port)
				if err := p.client.WriteRawPacket(quotedError(tc.a, up, dst, uint8(header.UDPProtocolNumber), 3, 0)); err != nil {
					t.Fatal(err)
				}
			}
			// Until the gateway dropped them all, or they ended B's flow.
			netstacktest.WaitFor(t, func() bool {
				st := p.gw.Stats()
				return st.ICMP.ErrorsDropped[netstack.ICMPErrorOtherPeer] == 100 || st.OpenFlows == 0
			})
			exchange("after")
			if st := p.gw.Stats(); st.UDPForwarded != 1 || p.dialer.Dials.Load() != 1 || st.OpenFlows != 1 {
				t.Fatalf("after A's errors: flows opened %d, dials %d, open %d; want B's one flow untouched", st.UDPForwarded, p.dialer.Dials.Load(), st.OpenFlows)
			}
			// B's own port unreachable (its socket is gone) ends it.
			if err := p.client.WriteRawPacket(quotedError(b.Addr(), up, b, uint8(header.UDPProtocolNumber), 3, 0)); err != nil {
				t.Fatal(err)
			}
			netstacktest.WaitFor(t, func() bool { return p.gw.Stats().OpenFlows == 0 })
		})
	}
}

// A "fragmentation needed" with MTU 0 from another peer must not shrink a
// peer's TCP segments (gVisor took it as a 1-byte MSS: 256 KiB in 262,152
// packets); nor may the peer's own below the minimum MTU; a plausible one
// from the peer itself still lowers them (path MTU discovery).
func TestICMPErrorFromOtherPeerSparesTCPSegmentSize(t *testing.T) {
	netstacktest.CheckLeaks(t)
	const size = 64 << 10
	for _, tc := range []struct {
		name, listen string
		a            netip.Addr
		minMTU       uint32
	}{{"ipv4", "127.0.0.1:0", peerAV4, 576}, {"ipv6", "[::1]:0", peerAV6, 1280}} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t, netstack.Config{Allow: allowLoopback, PeerOf: twoPeers})
			var packets, biggest atomic.Int64
			count := func(pkt []byte) bool {
				packets.Add(1)
				if n := int64(len(pkt)); n > biggest.Load() {
					biggest.Store(n)
				}
				return false
			}
			p.dropToClient.Store(&count)
			up := sender(t, tc.listen, size)
			var forwarded uint64
			download := func(what string, forge func(b netip.AddrPort)) {
				t.Helper()
				c, err := p.client.DialContext(ctxTimeout(t, 5*time.Second), "tcp", up.String())
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				b := c.LocalAddr().(*net.TCPAddr).AddrPort()
				// The error goes in once the gateway's end is
				// established: gVisor applies an MTU that arrives
				// during the handshake to nothing (a peer's path MTU
				// discovery reacts to data, which comes later).
				forwarded++
				netstacktest.WaitFor(t, func() bool { return p.gw.Stats().TCPForwarded == forwarded })
				forge(b)
				packets.Store(0)
				biggest.Store(0)
				// The stack takes the error as it arrives; the byte
				// that starts the sender follows it on the same path.
				c.Write([]byte{1})
				c.SetReadDeadline(time.Now().Add(20 * time.Second))
				n, err := io.Copy(io.Discard, c)
				if err != nil || n != size {
					t.Fatalf("%s: read %d of %d bytes: %v (%d packets to the client)", what, n, size, err, packets.Load())
				}
			}
			tcp := uint8(header.TCPProtocolNumber)
			for _, forger := range []struct {
				what string
				src  func(b netip.AddrPort) netip.Addr
				mtu  uint32
			}{
				{"A's MTU 0", func(netip.AddrPort) netip.Addr { return tc.a }, 0},
				{"A's MTU 1000", func(netip.AddrPort) netip.Addr { return tc.a }, 1000},
				{"B's own MTU below the minimum", func(b netip.AddrPort) netip.Addr { return b.Addr() }, tc.minMTU - 1},
			} {
				download(forger.what, func(b netip.AddrPort) {
					if err := p.client.WriteRawPacket(quotedError(forger.src(b), up, b, tcp, 4, forger.mtu)); err != nil {
						t.Fatal(err)
					}
				})
				// 64 KiB in full-sized segments is ~50 packets (and the
				// handshake and close); tiny ones would be thousands.
				if n := packets.Load(); n > 200 || biggest.Load() < 1300 {
					t.Errorf("after %s: %d packets to the client, biggest %d bytes; want full-sized segments", forger.what, n, biggest.Load())
				}
			}
			// B's own plausible "fragmentation needed": segments fit it.
			download("B's own MTU 1300", func(b netip.AddrPort) {
				if err := p.client.WriteRawPacket(quotedError(b.Addr(), up, b, tcp, 4, 1300)); err != nil {
					t.Fatal(err)
				}
			})
			if n := biggest.Load(); n > 1300 {
				t.Errorf("after B's own MTU 1300: packets of %d bytes reached it", n)
			}
			st := p.gw.Stats().ICMP.ErrorsDropped
			if st[netstack.ICMPErrorOtherPeer] != 2 || st[netstack.ICMPErrorSmallMTU] != 1 {
				t.Errorf("errors dropped %v, want 2 from another peer and 1 below the minimum MTU", st)
			}
		})
	}
}

// A peer's ICMP errors beyond its rate are dropped and counted.
func TestICMPErrorRate(t *testing.T) {
	netstacktest.CheckLeaks(t)
	p := newPair(t, netstack.Config{Allow: allowLoopback, PeerOf: twoPeers, ICMPRate: 1, ICMPBurst: 10})
	b := netip.AddrPortFrom(clientV4.Addr(), 40000)
	up := netip.MustParseAddrPort("127.0.0.1:9")
	for range 100 {
		if err := p.client.WriteRawPacket(quotedError(b.Addr(), up, b, uint8(header.UDPProtocolNumber), 3, 0)); err != nil {
			t.Fatal(err)
		}
	}
	// 10 pass (no flow of that 4-tuple: gVisor ignores them), about 90
	// are dropped; the test takes well under the 1 s a token needs.
	netstacktest.WaitFor(t, func() bool { return p.gw.Stats().ICMP.ErrorsDropped[netstack.ICMPErrorRate] >= 89 })
	if n := p.gw.Stats().ICMP.ErrorsDropped[netstack.ICMPErrorRate]; n > 90 {
		t.Errorf("%d of 100 errors dropped at a burst of 10", n)
	}
}

// sender serves TCP on listen: for each connection, after one byte from
// the client, it writes size bytes and closes.
func sender(t *testing.T, listen string, size int) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Skipf("listen %s: %v", listen, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := c.Read(make([]byte, 1)); err != nil {
					return
				}
				c.Write(make([]byte, size))
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

func addrOf(a netip.Addr) tcpip.Address { return tcpip.AddrFromSlice(a.AsSlice()) }
