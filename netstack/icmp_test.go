package netstack_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/appconnector/appconnector/netstack"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// TestEchoDroppedSilently: echo requests that must get no answer at all,
// neither a forwarded one nor gVisor's own (which, for IPv6, would be an
// echo reply forged from the destination): to multicast or broadcast,
// with a bad checksum, with a nonzero code. The handler takes each (so
// gVisor does not answer) and counts it.
func TestEchoDroppedSilently(t *testing.T) {
	netstacktest.CheckLeaks(t)
	p := newPair(t, netstack.Config{Allow: func(netstack.Flow) bool { return true }})
	c4, c6 := clientV4.Addr(), clientV6.Addr()
	badSum := netstacktest.EchoRequest(c4, netip.MustParseAddr("127.0.0.1"), 1, 1, []byte("x"))
	badSum[len(badSum)-1] ^= 0xff
	code1 := func(src, dst netip.Addr, typ byte) []byte {
		return netstacktest.ICMPPacket(src, dst, []byte{typ, 1, 0, 0, 0, 1, 0, 1})
	}
	for _, pkt := range [][]byte{
		netstacktest.EchoRequest(c4, netip.MustParseAddr("224.0.0.1"), 1, 1, nil),
		netstacktest.EchoRequest(c4, netip.MustParseAddr("255.255.255.255"), 1, 1, nil),
		netstacktest.EchoRequest(c6, netip.MustParseAddr("ff02::1"), 1, 1, nil),
		badSum,
		code1(c4, netip.MustParseAddr("127.0.0.1"), 8),
		code1(c6, netip.MustParseAddr("::1"), 128),
	} {
		if err := p.client.WriteRawPacket(pkt); err != nil {
			t.Fatal(err)
		}
	}
	netstacktest.WaitFor(t, func() bool { return p.gw.Stats().ICMP.Malformed == 6 })
	st := p.gw.Stats().ICMP
	if st != (netstack.ICMPStats{Malformed: 6}) {
		t.Errorf("stats %+v, want 6 malformed and nothing else", st)
	}
	if n := p.gw.Stats().OpenFlows; n != 0 {
		t.Errorf("open flows %d", n)
	}
}

// TestEchoFlowLimit: an echo request that would open a flow beyond the
// peer's flow cap is refused like one the policy refuses. The cap is
// taken by a UDP flow, so no ICMP socket is needed.
func TestEchoFlowLimit(t *testing.T) {
	netstacktest.CheckLeaks(t)
	p := newPair(t, netstack.Config{Allow: allowLoopback, MaxFlowsPerPeer: 1})
	up := netstacktest.UDPEcho(t, "127.0.0.1:0").Addr
	c, err := p.client.DialContext(ctxTimeout(t, 5*time.Second), "udp", up.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hold")); err != nil {
		t.Fatal(err)
	}
	netstacktest.WaitFor(t, func() bool { return p.gw.Stats().OpenFlows == 1 })
	if err := p.client.WriteRawPacket(netstacktest.EchoRequest(clientV4.Addr(), up.Addr(), 3, 1, nil)); err != nil {
		t.Fatal(err)
	}
	netstacktest.WaitFor(t, func() bool { return p.gw.Stats().ICMP.ProhibitedSent == 1 })
	if st := p.gw.Stats().ICMP; st.Limited != 1 || st.Flows != 0 || st.Refused != 0 {
		t.Errorf("stats %+v, want one limited, no flow", st)
	}
}
