package netstack_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/appconnector/appconnector/netstack"
	"github.com/appconnector/appconnector/netstack/netstacktest"
	"github.com/appconnector/appconnector/tun"
)

// A peer resets its connection while the upstream is idle (waiting for a
// request): the upstream must be told, not left holding the connection.
func TestPeerResetReachesIdleHost(t *testing.T) {
	netstacktest.CheckLeaks(t)
	p := newPair(t, netstack.Config{Allow: allowLoopback})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	hostDone := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			hostDone <- err
			return
		}
		defer c.Close()
		c.Write([]byte("hello")) // left unread: the client's Close sends a RST
		_, err = c.Read(make([]byte, 10))
		hostDone <- err
	}()
	c, err := p.client.DialContext(ctxTimeout(t, 5*time.Second), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	netstacktest.WaitFor(t, func() bool { return p.gw.Stats().TCPForwarded == 1 })
	time.Sleep(50 * time.Millisecond) // let "hello" arrive, unread
	c.Close()
	select {
	case err := <-hostDone:
		if err == nil {
			t.Error("upstream read data after the peer reset")
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("upstream connection still open 10s after the peer reset; stats %+v", p.gw.Stats())
	}
	netstacktest.WaitFor(t, func() bool { return p.gw.Stats().OpenFlows == 0 })
}

// The upstream resets its connection in the middle of a download: the
// peer must see a reset (not a clean end it could mistake for a complete
// response), promptly, after the bytes that came before it.
func TestHostResetReachesPeer(t *testing.T) {
	netstacktest.CheckLeaks(t)
	p := newPair(t, netstack.Config{Allow: allowLoopback})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const sent = 256 << 10
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Write(make([]byte, sent))
		// Let the bytes reach the gateway, then reset.
		time.Sleep(100 * time.Millisecond)
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}()
	c, err := p.client.DialContext(ctxTimeout(t, 5*time.Second), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := io.Copy(io.Discard, c)
	var ne net.Error
	switch {
	case err == nil:
		t.Fatalf("the peer saw a clean end after %d bytes; want a reset", n)
	case errors.As(err, &ne) && ne.Timeout():
		t.Fatalf("no reset within 10 s (read %d bytes)", n)
	}
	if n > sent {
		t.Errorf("read %d bytes, more than the %d sent", n, sent)
	}
	netstacktest.WaitFor(t, func() bool { return p.gw.Stats().OpenFlows == 0 })
}

// A peer floods SYNs to a destination that never answers: its dials hold
// at most its per-peer share of dial slots, the excess is refused and
// counted, another peer's flow connects meanwhile, and every slot comes
// back when the dial timeout passes.
func TestSYNFloodToBlackhole(t *testing.T) {
	netstacktest.CheckLeaks(t)
	blackhole := netip.MustParseAddrPort("127.0.0.9:80")
	d := &netstacktest.Dialer{Blackhole: func(a string) bool { return a == blackhole.String() }}
	const perPeer, flood = 32, 500
	p := newPair(t, netstack.Config{Allow: allowLoopback, Dial: d.DialContext, DialTimeout: time.Second,
		MaxInFlightDials: 4 * perPeer, MaxInFlightDialsPerPeer: perPeer})
	echo := netstacktest.TCPEcho(t, "127.0.0.1:0")

	// The flooder is another address (so another peer) on the client's
	// side; the gateway's answers to it go nowhere.
	flooder := netip.MustParseAddr("10.9.9.9")
	for i := range flood {
		if err := p.client.WriteRawPacket(synPacket(netip.AddrPortFrom(flooder, uint16(20000+i)), blackhole)); err != nil {
			t.Fatal(err)
		}
	}
	// (gVisor's own in-flight limit may drop some SYNs before ours sees
	// them: those are counted as ForwarderDropped.)
	netstacktest.WaitFor(t, func() bool {
		st := p.gw.Stats()
		return uint64(st.InFlightDials)+st.TCPLimited+st.ForwarderDropped >= flood
	})
	if st := p.gw.Stats(); st.InFlightDials > perPeer || st.TCPLimited+st.ForwarderDropped < flood-perPeer {
		t.Fatalf("during the flood: %d dials in flight (cap %d per peer), %d refused, %d dropped",
			st.InFlightDials, perPeer, st.TCPLimited, st.ForwarderDropped)
	}

	// Another peer connects while the flood's dials are still held.
	c, err := p.client.DialContext(ctxTimeout(t, 5*time.Second), "tcp", echo.String())
	if err != nil {
		t.Fatalf("legitimate flow during the flood: %v", err)
	}
	netstacktest.EchoTCP(t, c, 4096)
	c.Close()
	if st := p.gw.Stats(); st.InFlightDials == 0 {
		t.Fatal("the flood's dials ended before the legitimate flow was tried; the test proves nothing")
	}

	netstacktest.WaitFor(t, func() bool { return p.gw.Stats().InFlightDials == 0 })
	if st := p.gw.Stats(); st.DialFailures[netstack.DialTimeout] != flood-st.TCPLimited-st.ForwarderDropped {
		t.Errorf("%d dial timeouts, want one per admitted SYN (%d)", st.DialFailures[netstack.DialTimeout], flood-st.TCPLimited-st.ForwarderDropped)
	}
}

// synPacket is a bare TCP SYN from src to dst (IPv4 or IPv6) with valid
// checksums.
func synPacket(src, dst netip.AddrPort) []byte {
	tcpFields := header.TCPFields{SrcPort: src.Port(), DstPort: dst.Port(), SeqNum: 1000,
		DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagSyn, WindowSize: 65535}
	if src.Addr().Is4() {
		b := make([]byte, header.IPv4MinimumSize+header.TCPMinimumSize)
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber),
			SrcAddr: tcpip.AddrFrom4(src.Addr().As4()), DstAddr: tcpip.AddrFrom4(dst.Addr().As4())})
		ip.SetChecksum(^ip.CalculateChecksum())
		tc := header.TCP(b[header.IPv4MinimumSize:])
		tc.Encode(&tcpFields)
		xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(tc)))
		tc.SetChecksum(^tc.CalculateChecksum(xsum))
		return b
	}
	b := make([]byte, header.IPv6MinimumSize+header.TCPMinimumSize)
	ip := header.IPv6(b)
	ip.Encode(&header.IPv6Fields{PayloadLength: header.TCPMinimumSize, TransportProtocol: header.TCPProtocolNumber, HopLimit: 64,
		SrcAddr: tcpip.AddrFrom16(src.Addr().As16()), DstAddr: tcpip.AddrFrom16(dst.Addr().As16())})
	tc := header.TCP(b[header.IPv6MinimumSize:])
	tc.Encode(&tcpFields)
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(tc)))
	tc.SetChecksum(^tc.CalculateChecksum(xsum))
	return b
}

// SYNs whose SYN-ACKs are never acknowledged hold their per-peer slot and
// host connection only until the dial timeout, not for gVisor's two-minute
// retransmission schedule, and do not hold up Close.
func TestUnansweredHandshakeIsBounded(t *testing.T) {
	netstacktest.CheckLeaks(t)
	dev, err := tun.New(tun.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	s, err := netstack.New(dev, netstack.Config{
		Addresses: []netip.Prefix{gwV4}, Allow: allowLoopback, Dial: (&netstacktest.Dialer{}).DialContext,
		DialTimeout: 300 * time.Millisecond, MaxInFlightDialsPerPeer: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			defer c.Close()
		}
	}()
	go func() { // the peer: swallows SYN-ACKs, never answers
		bufs, sizes := [][]byte{make([]byte, 65535)}, []int{0}
		for {
			if _, err := dev.Read(bufs, sizes, 0); err != nil {
				return
			}
		}
	}()
	dst := ln.Addr().(*net.TCPAddr).AddrPort()
	for i := range 4 {
		dev.Write([][]byte{synPacket(netip.AddrPortFrom(clientV4.Addr(), uint16(40000+i)), dst)}, 0)
	}
	// Two handshakes hold the peer's two slots; the other two SYNs are
	// refused.
	netstacktest.WaitFor(t, func() bool { st := s.Stats(); return st.TCPLimited == 2 })
	if n := accepted.Load(); n > 2 {
		t.Errorf("host accepted %d connections for 2 admitted SYNs", n)
	}
	// After the dial timeout the half-open handshakes are given up.
	netstacktest.WaitFor(t, func() bool { st := s.Stats(); return st.OpenFlows == 0 && st.InFlightDials == 0 })
	if st := s.Stats(); st.HandlerFailures != 2 {
		t.Errorf("HandlerFailures = %d, want 2 abandoned handshakes", st.HandlerFailures)
	}

	// A fresh handshake in progress does not hold up Close.
	dev.Write([][]byte{synPacket(netip.AddrPortFrom(clientV4.Addr(), 41000), dst)}, 0)
	netstacktest.WaitFor(t, func() bool { return s.Stats().InFlightDials == 1 })
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close blocked by a pending handshake")
	}
}

// Quiet forwarded flows hold no copy buffers: the memory a peer can pin
// with idle flows is per socket, not per 64 KiB buffer.
func TestIdleFlowsHoldNoBuffers(t *testing.T) {
	netstacktest.CheckLeaks(t)
	p := newPair(t, netstack.Config{Allow: allowLoopback})
	up := netstacktest.UDPEcho(t, "127.0.0.1:0").Addr
	const n = 500
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	buf := make([]byte, 8)
	for range n {
		c, err := p.client.DialContext(context.Background(), "udp", up.String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		c.Write([]byte("x"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(buf); err != nil {
			t.Fatal(err)
		}
	}
	if st := p.gw.Stats(); st.OpenFlows != n {
		t.Fatalf("OpenFlows = %d, want %d", st.OpenFlows, n)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	perFlow := (int64(after.HeapInuse) - int64(before.HeapInuse)) / n
	t.Logf("%d idle UDP flows (client and gateway sides): %d KiB of heap per flow", n, perFlow>>10)
	// Two 64 KiB buffers per flow would be 128 KiB; the rest (gVisor
	// endpoints on both stacks, sockets, goroutine bookkeeping) is far less.
	if perFlow > 64<<10 {
		t.Errorf("%d KiB of heap per idle flow; copy buffers are being held", perFlow>>10)
	}
}
