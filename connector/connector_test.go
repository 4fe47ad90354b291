package connector_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/apptype"
	"github.com/appconnector/appconnector/connector/wireguard"
	"github.com/appconnector/appconnector/connector/wireguard/wgtest"
	"github.com/appconnector/appconnector/netstack"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// The whole data path, in one process, with real parts: a client peer
// (wireguard-go + its own userspace stack) talks WireGuard over UDP on
// 127.0.0.1 to a Connector, which forwards to real TCP and UDP servers on
// loopback. The policy allows 127.0.0.1/32 and ::1/128 only.

var (
	connV4   = netip.MustParsePrefix("10.99.0.1/24")
	connV6   = netip.MustParsePrefix("fd99::1/64")
	clientV4 = netip.MustParsePrefix("10.99.0.2/32")
	clientV6 = netip.MustParsePrefix("fd99::2/128")
)

const testPolicy = `[{"name": "loopback", "connectors": ["*"], "domains": [], "routes": ["127.0.0.1/32", "::1/128"]}]`

type env struct {
	conn      *connector.Connector
	client    *wgtest.Peer
	dialer    *netstacktest.Dialer
	clientPub wireguard.Key // the client peer's public key
	// icmp receives the ICMP packets the client peer gets through the
	// tunnel (those that find it full are dropped).
	icmp chan netstacktest.ICMP
}

func (e *env) clientKey() string { return e.clientPub.String() }

func newEnv(t *testing.T, nc netstack.Config) *env {
	t.Helper()
	return newEnvWith(t, connector.Config{Netstack: nc}, testPolicy)
}

// newEnvWith starts a connector with cfg (WireGuard, listen address,
// dialer and policy filled in from policyJSON) and a client peer.
func newEnvWith(t testing.TB, cfg connector.Config, policyJSON string) *env {
	t.Helper()
	return newEnvVia(t, cfg, policyJSON, func(a netip.AddrPort) netip.AddrPort { return a })
}

// newEnvVia is newEnvWith with the client sending its WireGuard packets to
// via(the connector's address) instead, e.g. a relay in between.
func newEnvVia(t testing.TB, cfg connector.Config, policyJSON string, via func(netip.AddrPort) netip.AddrPort) *env {
	t.Helper()
	serverKey, err := wireguard.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	clientKey, err := wireguard.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	policy, err := apptype.ParsePolicy("test-policy.json", []byte(policyJSON))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{dialer: &netstacktest.Dialer{}, clientPub: clientKey.PublicKey(), icmp: make(chan netstacktest.ICMP, 256)}
	logf := t.Logf
	if _, fuzz := t.(*testing.F); fuzz {
		// A fuzz target may not log through F while it runs.
		logf = func(string, ...any) {}
	}
	cfg.Netstack.Dial = e.dialer.DialContext
	cfg.WireGuard = &wireguard.Config{
		Interface: wireguard.Interface{PrivateKey: serverKey, Addresses: []netip.Prefix{connV4, connV6}},
		Peers: []wireguard.Peer{{
			PublicKey:  clientKey.PublicKey(),
			AllowedIPs: []netip.Prefix{clientV4, clientV6},
			Tags:       []string{"tag:test"},
		}},
	}
	cfg.ListenAddr = netip.MustParseAddr("127.0.0.1")
	cfg.Policy = policy
	e.conn, err = connector.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.conn.Close() })
	e.client, err = wgtest.New(wgtest.Config{
		PrivateKey: clientKey,
		Addresses:  []netip.Prefix{clientV4, clientV6},
		Remotes: []wireguard.Peer{{
			PublicKey:  serverKey.PublicKey(),
			Endpoint:   via(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), e.conn.Port())).String(),
			AllowedIPs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")},
		}},
		Logf: logf,
		Inbound: func(pkt []byte) {
			if m, ok := netstacktest.ParseICMP(pkt); ok {
				m.Body = append([]byte(nil), m.Body...)
				select {
				case e.icmp <- m:
				default:
				}
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.client.Close() })
	return e
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestEndToEndTCP(t *testing.T) {
	netstacktest.CheckLeaks(t)
	e := newEnv(t, netstack.Config{})
	for _, tc := range []struct{ name, listen string }{
		{"ipv4", "127.0.0.1:0"},
		{"ipv6", "[::1]:0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := netstacktest.TCPEcho(t, tc.listen)
			c, err := e.client.DialContext(ctxTimeout(t, 10*time.Second), "tcp", up.String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			netstacktest.EchoTCP(t, c, 1<<20)
		})
	}
	if st := e.conn.Stats(); st.Netstack.TCPForwarded < 1 {
		t.Errorf("TCPForwarded = %d", st.Netstack.TCPForwarded)
	}
}

func TestEndToEndOutsideRoutesIsReset(t *testing.T) {
	netstacktest.CheckLeaks(t)
	e := newEnv(t, netstack.Config{})
	// 127.0.0.2 is loopback but not in the policy's routes.
	dst := netstacktest.TCPEcho(t, "127.0.0.2:0")
	start := time.Now()
	_, err := e.client.DialContext(ctxTimeout(t, time.Second), "tcp", dst.String())
	if err == nil {
		t.Fatal("dial outside the routes succeeded")
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("no RST within 1s (%v): %v", time.Since(start), err)
	}
	if n := e.dialer.Dials.Load(); n != 0 {
		t.Errorf("host dials = %d, want 0", n)
	}
}

func TestEndToEndUDPAndIdleCleanup(t *testing.T) {
	netstacktest.CheckLeaks(t)
	e := newEnv(t, netstack.Config{UDPIdleTimeout: 300 * time.Millisecond})
	for _, tc := range []struct{ name, listen string }{
		{"ipv4", "127.0.0.1:0"},
		{"ipv6", "[::1]:0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := netstacktest.UDPEcho(t, tc.listen)
			c, err := e.client.DialContext(ctxTimeout(t, 5*time.Second), "udp", srv.Addr.String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			buf := make([]byte, 2000)
			for i := range 10 {
				msg := make([]byte, 100+i*100)
				rand.Read(msg)
				c.Write(msg)
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				n, err := c.Read(buf)
				if err != nil {
					t.Fatalf("datagram %d: %v", i, err)
				}
				if !bytes.Equal(buf[:n], msg) {
					t.Fatalf("datagram %d: mismatch", i)
				}
			}
			// The flow ends after the idle timeout and its resources go.
			netstacktest.WaitFor(t, func() bool { return e.conn.Stats().Netstack.OpenFlows == 0 })
		})
	}
	if st := e.conn.Stats().Netstack; st.UDPIdleClosed != 2 || st.UDPForwarded != 2 {
		t.Errorf("UDPForwarded = %d, UDPIdleClosed = %d; want 2 and 2", st.UDPForwarded, st.UDPIdleClosed)
	}
}

// TestEndToEndSpoofedSourceDropped sends a UDP packet whose inner source is
// not in the client peer's AllowedIPs; the connector's WireGuard must drop
// it before it reaches the stack. A packet with the right source, sent
// right after on the same path, shows the path works.
func TestEndToEndSpoofedSourceDropped(t *testing.T) {
	netstacktest.CheckLeaks(t)
	e := newEnv(t, netstack.Config{})
	srv := netstacktest.UDPEcho(t, "127.0.0.1:0")
	dst := srv.Addr
	spoofed := netip.MustParseAddr("10.99.0.99")

	// A first exchange brings the WireGuard session up.
	c, err := e.client.DialContext(ctxTimeout(t, 5*time.Second), "udp", dst.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hello"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 16)); err != nil {
		t.Fatal(err)
	}
	dials := e.dialer.Dials.Load()

	if err := e.client.WriteRawPacket(udp4Packet(spoofed, 4444, dst, "spoofed")); err != nil {
		t.Fatal(err)
	}
	if err := e.client.WriteRawPacket(udp4Packet(clientV4.Addr(), 4445, dst, "genuine")); err != nil {
		t.Fatal(err)
	}
	netstacktest.WaitFor(t, func() bool { return srv.Seen("genuine") == 1 })
	if n := srv.Seen("spoofed"); n != 0 {
		t.Fatalf("the spoofed packet reached the upstream %d times", n)
	}
	if n := e.dialer.Dials.Load() - dials; n != 1 {
		t.Errorf("host dials for the raw packets = %d, want 1 (the genuine one)", n)
	}
}

// udp4Packet builds an IPv4/UDP packet with valid checksums.
func udp4Packet(src netip.Addr, sport uint16, dst netip.AddrPort, payload string) []byte {
	p := make([]byte, 20+8+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8] = 64
	p[9] = 17
	s4, d4 := src.As4(), dst.Addr().As4()
	copy(p[12:16], s4[:])
	copy(p[16:20], d4[:])
	binary.BigEndian.PutUint16(p[10:], ^sum16(p[:20], 0))
	u := p[20:]
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dst.Port())
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[8:], payload)
	pseudo := make([]byte, 12)
	copy(pseudo[0:4], s4[:])
	copy(pseudo[4:8], d4[:])
	pseudo[9] = 17
	binary.BigEndian.PutUint16(pseudo[10:], uint16(len(u)))
	cs := ^sum16(u, sum16(pseudo, 0))
	if cs == 0 {
		cs = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], cs)
	return p
}

func sum16(b []byte, initial uint16) uint16 {
	s := uint32(initial)
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

func TestNewRejectsBadConfig(t *testing.T) {
	netstacktest.CheckLeaks(t)
	key, _ := wireguard.GeneratePrivateKey()
	for name, cfg := range map[string]connector.Config{
		"no wireguard": {},
		"no address":   {WireGuard: &wireguard.Config{Interface: wireguard.Interface{PrivateKey: key}}},
	} {
		if _, err := connector.New(cfg); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
	// The port is taken: a clear error, nothing left running.
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	_, err = connector.New(connector.Config{
		WireGuard: &wireguard.Config{Interface: wireguard.Interface{
			PrivateKey: key,
			Addresses:  []netip.Prefix{connV4},
			ListenPort: uint16(pc.LocalAddr().(*net.UDPAddr).Port),
		}},
		ListenAddr: netip.MustParseAddr("127.0.0.1"),
	})
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("New on a busy port: %v", err)
	}
}
