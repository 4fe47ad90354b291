package netstack_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/appconnector/appconnector/netstack"
	"github.com/appconnector/appconnector/netstack/netstacktest"
	"github.com/appconnector/appconnector/tun"
)

// These tests join two stacks by copying packets between their tun devices
// (no WireGuard): a forwarding stack ("gateway") and a client stack that
// dials through it. Upstream servers are real sockets on loopback.

var (
	clientV4 = netip.MustParsePrefix("10.77.0.2/32")
	clientV6 = netip.MustParsePrefix("fd77::2/128")
	gwV4     = netip.MustParsePrefix("10.77.0.1/32")
	gwV6     = netip.MustParsePrefix("fd77::1/128")
)

type pair struct {
	gw, client       *netstack.Stack
	gwTun, clientTun *tun.Device
	dialer           *netstacktest.Dialer
	wg               sync.WaitGroup
	// dropToClient, if set, decides for each packet from the gateway to
	// the client whether the pipe loses it.
	dropToClient atomic.Pointer[func(pkt []byte) bool]
}

func allowLoopback(f netstack.Flow) bool { return f.Dst.Addr().IsLoopback() }

// newPair builds a gateway with cfg (Addresses, Dialer defaulted) and a
// client, joined by a packet pipe. Everything is closed at test cleanup.
func newPair(t *testing.T, cfg netstack.Config) *pair {
	t.Helper()
	p := &pair{dialer: &netstacktest.Dialer{}}
	if cfg.Dial == nil {
		cfg.Dial = p.dialer.DialContext // else the caller counts its dials
	}
	cfg.Addresses = []netip.Prefix{gwV4, gwV6}
	cfg.Logf = t.Logf
	var err error
	if p.gwTun, err = tun.New(tun.Config{}); err != nil {
		t.Fatal(err)
	}
	if p.clientTun, err = tun.New(tun.Config{}); err != nil {
		t.Fatal(err)
	}
	if p.gw, err = netstack.New(p.gwTun, cfg); err != nil {
		t.Fatal(err)
	}
	if p.client, err = netstack.New(p.clientTun, netstack.Config{Addresses: []netip.Prefix{clientV4, clientV6}}); err != nil {
		t.Fatal(err)
	}
	p.wg.Add(2)
	go p.copyPackets(p.gwTun, p.clientTun, &p.dropToClient)
	go p.copyPackets(p.clientTun, p.gwTun, nil)
	t.Cleanup(func() {
		p.client.Close()
		p.gw.Close()
		p.gwTun.Close()
		p.clientTun.Close()
		p.wg.Wait()
	})
	return p
}

func (p *pair) copyPackets(from, to *tun.Device, drop *atomic.Pointer[func([]byte) bool]) {
	defer p.wg.Done()
	bufs := make([][]byte, from.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, 65535)
	}
	sizes := make([]int, len(bufs))
	for {
		n, err := from.Read(bufs, sizes, 0)
		if err != nil {
			return
		}
		out := make([][]byte, 0, n)
		var dropFn *func([]byte) bool
		if drop != nil {
			dropFn = drop.Load()
		}
		for i := range n {
			if pkt := bufs[i][:sizes[i]]; dropFn == nil || !(*dropFn)(pkt) {
				out = append(out, pkt)
			}
		}
		if _, err := to.Write(out, 0); errors.Is(err, os.ErrClosed) {
			return
		}
	}
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestTCPEchoAndHalfClose(t *testing.T) {
	netstacktest.CheckLeaks(t)
	for _, tc := range []struct{ name, listen string }{
		{"ipv4", "127.0.0.1:0"},
		{"ipv6", "[::1]:0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t, netstack.Config{Allow: allowLoopback})
			up := netstacktest.TCPEcho(t, tc.listen)
			c, err := p.client.DialContext(ctxTimeout(t, 10*time.Second), "tcp", up.String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			netstacktest.EchoTCP(t, c, 1<<20)
			if n := p.dialer.Dials.Load(); n != 1 {
				t.Errorf("host dials = %d, want 1", n)
			}
		})
	}
}

// TestTCPCloseOrders closes a flow from each end first. Whichever side
// closes first, the other must read its data and a clean end of stream
// (a FIN, never a reset), and the gateway must let the flow go.
func TestTCPCloseOrders(t *testing.T) {
	netstacktest.CheckLeaks(t)
	for _, hostFirst := range []bool{true, false} {
		name := map[bool]string{true: "host-first", false: "peer-first"}[hostFirst]
		t.Run(name, func(t *testing.T) {
			p := newPair(t, netstack.Config{Allow: allowLoopback})
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			hostEnd := make(chan error, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					hostEnd <- err
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if hostFirst {
					c.Write([]byte("host"))
					c.(*net.TCPConn).CloseWrite()
				}
				got, err := io.ReadAll(c)
				if err == nil && string(got) != "peer" {
					err = fmt.Errorf("host read %q, want %q", got, "peer")
				}
				if err == nil && !hostFirst {
					_, err = c.Write([]byte("host"))
				}
				hostEnd <- err
			}()
			c, err := p.client.DialContext(ctxTimeout(t, 10*time.Second), "tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if hostFirst {
				got, err := io.ReadAll(c)
				if err != nil || string(got) != "host" {
					t.Fatalf("peer read %q, %v; want %q and the host's FIN", got, err, "host")
				}
			}
			if _, err := c.Write([]byte("peer")); err != nil {
				t.Fatal(err)
			}
			if hostFirst {
				c.Close()
			} else {
				c.(interface{ CloseWrite() error }).CloseWrite()
				got, err := io.ReadAll(c)
				if err != nil || string(got) != "host" {
					t.Fatalf("peer read %q, %v; want %q and the host's FIN", got, err, "host")
				}
			}
			if err := <-hostEnd; err != nil {
				t.Fatalf("host side: %v", err)
			}
			netstacktest.WaitFor(t, func() bool { return p.gw.Stats().OpenFlows == 0 })
		})
	}
}

func TestTCPRefusedByPolicy(t *testing.T) {
	netstacktest.CheckLeaks(t)
	p := newPair(t, netstack.Config{Allow: func(f netstack.Flow) bool { return f.Dst.Addr() == netip.MustParseAddr("127.0.0.2") }})
	up := netstacktest.TCPEcho(t, "127.0.0.1:0")
	// Well within the 1 s a refused flow may take; a dropped SYN would
	// time out instead.
	_, err := p.client.DialContext(ctxTimeout(t, time.Second), "tcp", up.String())
	if err == nil {
		t.Fatal("dial to a destination outside the routes succeeded")
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial timed out instead of being reset: %v", err)
	}
	if n := p.dialer.Dials.Load(); n != 0 {
		t.Errorf("host dials = %d, want 0", n)
	}
	if st := p.gw.Stats(); st.TCPRefused != 1 {
		t.Errorf("TCPRefused = %d, want 1", st.TCPRefused)
	}
}

func TestTCPHostRefusedIsReset(t *testing.T) {
	netstacktest.CheckLeaks(t)
	p := newPair(t, netstack.Config{Allow: allowLoopback})
	dead := netstacktest.ClosedPort(t, "tcp", "127.0.0.1")
	_, err := p.client.DialContext(ctxTimeout(t, 5*time.Second), "tcp", dead.String())
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial to a closed host port: err = %v, want a reset", err)
	}
	if st := p.gw.Stats(); st.TCPDialFailed != 1 || st.DialFailures[netstack.DialRefused] != 1 || st.OpenFlows != 0 {
		t.Errorf("stats = %+v, want one failed dial (refused) and no open flows", st)
	}
}

func TestTCPInFlightDialLimit(t *testing.T) {
	netstacktest.CheckLeaks(t)
	d := &netstacktest.Dialer{Hold: make(chan struct{})}
	p := newPair(t, netstack.Config{Allow: allowLoopback, Dial: d.DialContext, MaxInFlightDials: 4, MaxInFlightDialsPerPeer: 2})
	up := netstacktest.TCPEcho(t, "127.0.0.1:0")

	// Two dials from the one client peer hold its two slots.
	type result struct {
		c   net.Conn
		err error
	}
	held := make(chan result, 2)
	for range 2 {
		go func() {
			c, err := p.client.DialContext(ctxTimeout(t, 10*time.Second), "tcp", up.String())
			held <- result{c, err}
		}()
	}
	netstacktest.WaitFor(t, func() bool { return p.gw.Stats().InFlightDials == 2 })
	// The third is over the per-peer cap: RST, no dial.
	_, err := p.client.DialContext(ctxTimeout(t, 5*time.Second), "tcp", up.String())
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial over the limit: err = %v, want a reset", err)
	}
	if n := d.Dials.Load(); n != 2 {
		t.Errorf("host dials = %d, want 2", n)
	}
	if st := p.gw.Stats(); st.TCPLimited != 1 {
		t.Errorf("TCPLimited = %d, want 1", st.TCPLimited)
	}
	close(d.Hold)
	for range 2 {
		r := <-held
		if r.err != nil {
			t.Fatalf("held dial: %v", r.err)
		}
		r.c.Close()
	}
	netstacktest.WaitFor(t, func() bool { st := p.gw.Stats(); return st.OpenFlows == 0 && st.PeersWithFlows == 0 })
}

func TestTCPDialTimeoutReleasesSlot(t *testing.T) {
	netstacktest.CheckLeaks(t)
	d := &netstacktest.Dialer{Hold: make(chan struct{})} // never released: a blackhole
	p := newPair(t, netstack.Config{Allow: allowLoopback, Dial: d.DialContext, DialTimeout: 200 * time.Millisecond, MaxInFlightDialsPerPeer: 1})
	for i := range 3 {
		_, err := p.client.DialContext(ctxTimeout(t, 5*time.Second), "tcp", "127.0.0.1:9")
		if err == nil || errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("dial %d to a blackhole: err = %v, want a reset after the dial timeout", i, err)
		}
	}
	if st := p.gw.Stats(); st.TCPDialFailed != 3 || st.DialFailures[netstack.DialTimeout] != 3 || st.TCPLimited != 0 || st.InFlightDials != 0 {
		t.Errorf("stats = %+v, want 3 failed dials (timeouts), none limited, none in flight", st)
	}
}

func TestUDPEcho(t *testing.T) {
	netstacktest.CheckLeaks(t)
	for _, tc := range []struct{ name, listen string }{
		{"ipv4", "127.0.0.1:0"},
		{"ipv6", "[::1]:0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t, netstack.Config{Allow: allowLoopback})
			up := netstacktest.UDPEcho(t, tc.listen).Addr
			c, err := p.client.DialContext(ctxTimeout(t, 5*time.Second), "udp", up.String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			buf := make([]byte, 2000)
			for i := range 20 {
				msg := make([]byte, 1+i*97)
				rand.Read(msg)
				if _, err := c.Write(msg); err != nil {
					t.Fatal(err)
				}
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, err := c.Read(buf)
				if err != nil {
					t.Fatalf("datagram %d: %v", i, err)
				}
				if !bytes.Equal(buf[:n], msg) {
					t.Fatalf("datagram %d: echo mismatch", i)
				}
			}
			if st := p.gw.Stats(); st.UDPForwarded != 1 || p.dialer.Dials.Load() != 1 {
				t.Errorf("flows = %d, dials = %d; want one flow and one socket for the whole exchange", st.UDPForwarded, p.dialer.Dials.Load())
			}
		})
	}
}

func TestUDPRefusedByPolicyGetsICMP(t *testing.T) {
	netstacktest.CheckLeaks(t)
	p := newPair(t, netstack.Config{Allow: func(netstack.Flow) bool { return false }})
	up := netstacktest.UDPEcho(t, "127.0.0.1:0").Addr
	expectRefused(t, p, up)
	if n := p.dialer.Dials.Load(); n != 0 {
		t.Errorf("host dials = %d, want 0", n)
	}
	if st := p.gw.Stats(); st.UDPRefused == 0 {
		t.Errorf("UDPRefused = 0")
	}
}

func TestUDPHostRefusedGetsICMP(t *testing.T) {
	netstacktest.CheckLeaks(t)
	p := newPair(t, netstack.Config{Allow: allowLoopback})
	expectRefused(t, p, netstacktest.ClosedPort(t, "udp", "127.0.0.1"))
	if st := p.gw.Stats(); st.UDPHostRefused == 0 {
		t.Errorf("UDPHostRefused = 0")
	}
	netstacktest.WaitFor(t, func() bool { return p.gw.Stats().OpenFlows == 0 })
}

// expectRefused sends datagrams to dst until the client's socket reports
// the ICMP port unreachable as a refused connection (on the next read or
// write, as on Linux).
func expectRefused(t *testing.T, p *pair, dst netip.AddrPort) {
	t.Helper()
	c, err := p.client.DialContext(ctxTimeout(t, 5*time.Second), "udp", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 100)
	for range 20 {
		if _, err = c.Write([]byte("ping")); err == nil {
			c.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
			_, err = c.Read(buf)
			if err == nil {
				t.Fatal("got a reply from a refused destination")
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
		}
		if !strings.Contains(err.Error(), "refused") {
			t.Fatalf("got %v, want connection refused", err)
		}
		return
	}
	t.Fatal("no ICMP port unreachable reached the client")
}

func TestUDPIdleTimeout(t *testing.T) {
	netstacktest.CheckLeaks(t)
	p := newPair(t, netstack.Config{Allow: allowLoopback, UDPIdleTimeout: 300 * time.Millisecond})
	up := netstacktest.UDPEcho(t, "127.0.0.1:0").Addr
	c, err := p.client.DialContext(ctxTimeout(t, 5*time.Second), "udp", up.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hello"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	if st := p.gw.Stats(); st.OpenFlows != 1 {
		t.Fatalf("OpenFlows = %d, want 1", st.OpenFlows)
	}
	netstacktest.WaitFor(t, func() bool { return p.gw.Stats().OpenFlows == 0 })
	if st := p.gw.Stats(); st.UDPIdleClosed != 1 {
		t.Errorf("UDPIdleClosed = %d, want 1", st.UDPIdleClosed)
	}
	// The same 4-tuple opens a new flow.
	c.Write([]byte("again"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	if st := p.gw.Stats(); st.UDPForwarded != 2 {
		t.Errorf("UDPForwarded = %d, want 2", st.UDPForwarded)
	}
}

func TestCloseAbortsFlows(t *testing.T) {
	netstacktest.CheckLeaks(t)
	p := newPair(t, netstack.Config{Allow: allowLoopback})
	up := netstacktest.TCPEcho(t, "127.0.0.1:0")
	c, err := p.client.DialContext(ctxTimeout(t, 5*time.Second), "tcp", up.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("x"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	p.gw.Close() // the flow is open; Close must end it and its goroutines
	if _, err := p.gw.DialContext(context.Background(), "tcp", up.String()); err == nil {
		t.Error("dial after Close succeeded")
	}
}

func TestListenOnlyOwnAddresses(t *testing.T) {
	netstacktest.CheckLeaks(t)
	p := newPair(t, netstack.Config{})
	if _, err := p.gw.ListenTCP(netip.MustParseAddrPort("0.0.0.0:53")); err == nil {
		t.Error("listening on the unspecified address succeeded")
	}
	ln, err := p.gw.ListenTCP(netip.AddrPortFrom(gwV4.Addr(), 53))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pc, err := p.gw.ListenUDP(netip.AddrPortFrom(gwV6.Addr(), 53))
	if err != nil {
		t.Fatal(err)
	}
	pc.Close()
}
