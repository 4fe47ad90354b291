package netstack

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/appconnector/appconnector/netstack/netstacktest"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// TestSourcePortReuseAfterUpstreamClose: the upstream closes first, so the
// gateway's side of the forwarded flow ends in TIME-WAIT; a peer that
// reuses the same source port right away (as Linux does when it was the
// passive closer, and as any random port picker eventually does) must get
// a new flow, not SYN retransmissions until the TIME-WAIT ends. The
// gateway's TIME-WAIT here is 10 minutes, so only recycling can connect
// within the 5 s each dial gets.
func TestSourcePortReuseAfterUpstreamClose(t *testing.T) {
	for _, tc := range []struct {
		name             string
		gw, cl, upstream string
	}{
		{"ipv4", "10.5.0.1", "10.5.0.2", "127.0.0.1"},
		{"ipv6", "fd05::1", "fd05::2", "::1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			netstacktest.CheckLeaks(t)
			testSourcePortReuse(t, netip.MustParseAddr(tc.gw), netip.MustParseAddr(tc.cl), tc.upstream)
		})
	}
}

func testSourcePortReuse(t *testing.T, gwAddr, clAddr netip.Addr, upstream string) {
	gw, cl := joinedStacks(t,
		Config{Addresses: []netip.Prefix{netip.PrefixFrom(gwAddr, gwAddr.BitLen())}, TimeWait: 10 * time.Minute,
			Allow: func(f Flow) bool { return f.Dst.Addr().IsLoopback() }},
		Config{Addresses: []netip.Prefix{netip.PrefixFrom(clAddr, clAddr.BitLen())}})

	// The upstream answers one byte and closes first.
	ln, err := net.Listen("tcp", net.JoinHostPort(upstream, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("!"))
			c.Close()
		}
	}()
	up := ln.Addr().(*net.TCPAddr).AddrPort()
	local, proto := fullAddr(netip.AddrPortFrom(clAddr, 40123))
	remote, _ := fullAddr(up)
	const conns = 4
	for i := range conns {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := gonet.DialTCPWithBind(ctx, cl.stack, local, remote, proto)
		cancel()
		if err != nil {
			t.Fatalf("connection %d from the same source port: %v (gateway %+v)", i+1, err, gw.Stats())
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if b, err := io.ReadAll(c); err != nil || string(b) != "!" {
			t.Fatalf("connection %d: %q %v", i+1, b, err)
		}
		c.Close()
		// The client was the passive closer: once its endpoint is gone,
		// the port is free for it and the gateway's side is in TIME-WAIT.
		waitFor(t, 5*time.Second, "client endpoint closed", func() bool { return cl.Endpoints() == 0 })
		if n := gw.Endpoints(); n != 1 {
			t.Fatalf("after connection %d the gateway has %d endpoints, want 1 in TIME-WAIT", i+1, n)
		}
	}
	if st := gw.Stats(); st.TimeWaitRecycled != conns-1 || st.TCPForwarded != conns {
		t.Errorf("gateway: %d TIME-WAIT recycled, %d forwarded; want %d and %d", st.TimeWaitRecycled, st.TCPForwarded, conns-1, conns)
	}
}

// waitFor polls cond every millisecond until it holds or d has passed.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(d); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("%s: not within %v", what, d)
		}
	}
}

func TestNewSYN(t *testing.T) {
	tcp4 := func(flags header.TCPFlags, fragOff uint16, ipProto uint8) []byte {
		b := make([]byte, header.IPv4MinimumSize+header.TCPMinimumSize)
		header.IPv4(b).Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: ipProto,
			FragmentOffset: fragOff,
			SrcAddr:        tcpip.AddrFrom4([4]byte{10, 0, 0, 2}), DstAddr: tcpip.AddrFrom4([4]byte{192, 0, 2, 7})})
		header.TCP(b[header.IPv4MinimumSize:]).Encode(&header.TCPFields{SrcPort: 40000, DstPort: 443,
			DataOffset: header.TCPMinimumSize, Flags: flags})
		return b
	}
	tcp6 := func(flags header.TCPFlags, next uint8) []byte {
		b := make([]byte, header.IPv6MinimumSize+header.TCPMinimumSize)
		header.IPv6(b).Encode(&header.IPv6Fields{PayloadLength: header.TCPMinimumSize, TransportProtocol: tcpip.TransportProtocolNumber(next),
			HopLimit: 64, SrcAddr: tcpip.AddrFrom16([16]byte{0xfd, 15: 2}), DstAddr: tcpip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 7})})
		header.TCP(b[header.IPv6MinimumSize:]).Encode(&header.TCPFields{SrcPort: 40000, DstPort: 443,
			DataOffset: header.TCPMinimumSize, Flags: flags})
		return b
	}
	syn, ack, rst := header.TCPFlagSyn, header.TCPFlagAck, header.TCPFlagRst
	tcpNum, udpNum := uint8(header.TCPProtocolNumber), uint8(header.UDPProtocolNumber)
	for _, tc := range []struct {
		name string
		pkt  []byte
		want bool
	}{
		{"v4 syn", tcp4(syn, 0, tcpNum), true},
		{"v4 syn-ack", tcp4(syn|ack, 0, tcpNum), false},
		{"v4 syn-rst", tcp4(syn|rst, 0, tcpNum), false},
		{"v4 ack", tcp4(ack, 0, tcpNum), false},
		{"v4 fragment", tcp4(syn, 8, tcpNum), false},
		{"v4 udp", tcp4(syn, 0, udpNum), false},
		{"v4 truncated", tcp4(syn, 0, tcpNum)[:header.IPv4MinimumSize+12], false},
		{"v4 syn with data", append(tcp4(syn, 0, tcpNum), make([]byte, 100)...), false},
		{"v6 syn", tcp6(syn, tcpNum), true},
		{"v6 syn-ack", tcp6(syn|ack, tcpNum), false},
		{"v6 extension header", tcp6(syn, uint8(header.IPv6HopByHopOptionsExtHdrIdentifier)), false},
		{"v6 truncated", tcp6(syn, tcpNum)[:header.IPv6MinimumSize+4], false},
		{"empty", nil, false},
		{"version 5", []byte{0x50, 0, 0, 0}, false},
	} {
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(tc.pkt)})
		netProto, id, ok := newSYN(pkt)
		pkt.DecRef()
		if ok != tc.want {
			t.Errorf("%s: newSYN = %v, want %v", tc.name, ok, tc.want)
			continue
		}
		if !ok {
			continue
		}
		want4 := netProto == header.IPv4ProtocolNumber && id.LocalAddress == tcpip.AddrFrom4([4]byte{192, 0, 2, 7}) &&
			id.RemoteAddress == tcpip.AddrFrom4([4]byte{10, 0, 0, 2})
		want6 := netProto == header.IPv6ProtocolNumber && id.LocalAddress == tcpip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 7}) &&
			id.RemoteAddress == tcpip.AddrFrom16([16]byte{0xfd, 15: 2})
		if !(want4 || want6) || id.LocalPort != 443 || id.RemotePort != 40000 {
			t.Errorf("%s: newSYN = %v %+v", tc.name, netProto, id)
		}
	}
}
