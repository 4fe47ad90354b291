package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/apptype"
	"github.com/appconnector/appconnector/connector/client"
	"github.com/appconnector/appconnector/connector/dnstest"
	"github.com/appconnector/appconnector/connector/dnszone"
	"github.com/appconnector/appconnector/connector/wireguard"
	"github.com/appconnector/appconnector/netstack"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// Real parts on loopback: connectors with a real upstream DNS server, a
// client talking WireGuard to them, echo servers as the app.

const appPolicy = `[{"name": "web", "connectors": ["*"], "domains": ["app.example.com", "*.app.example.com"],
  "allowPrivate": ["127.0.0.1/32", "::1/128"]}]`

var loopback = netip.MustParseAddr("127.0.0.1")

// testConnector is a running connector the client may use.
type testConnector struct {
	conn   *connector.Connector
	key    wireguard.Key
	tunnel netip.Addr
	dialer *netstacktest.Dialer
}

func startConnector(t *testing.T, n int, clientPub wireguard.Key, upstream string) *testConnector {
	return startConnectorWith(t, n, clientPub, upstream, appPolicy)
}

func startConnectorWith(t *testing.T, n int, clientPub wireguard.Key, upstream, policyJSON string, mods ...func(*connector.Config)) *testConnector {
	t.Helper()
	key, err := wireguard.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	policy, err := apptype.ParsePolicy("policy.json", []byte(policyJSON))
	if err != nil {
		t.Fatal(err)
	}
	tc := &testConnector{key: key, tunnel: netip.AddrFrom4([4]byte{10, 90, byte(n), 1}), dialer: &netstacktest.Dialer{}}
	cfg := connector.Config{
		WireGuard: &wireguard.Config{
			Interface: wireguard.Interface{PrivateKey: key, Addresses: []netip.Prefix{netip.PrefixFrom(tc.tunnel, 24)}},
			Peers:     []wireguard.Peer{{PublicKey: clientPub, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.90.0.2/32")}}},
		},
		ListenAddr:   loopback,
		Policy:       policy,
		DNSUpstreams: []string{upstream},
		Netstack:     netstackCfg(tc.dialer),
	}
	for _, mod := range mods {
		mod(&cfg)
	}
	tc.conn, err = connector.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.conn.Close() })
	return tc
}

// peerFor is the client's [Peer] for a connector.
func (tc *testConnector) peerFor() wireguard.Peer {
	return wireguard.Peer{
		PublicKey:  tc.key.PublicKey(),
		Endpoint:   netip.AddrPortFrom(loopback, tc.conn.Port()).String(),
		AllowedIPs: []netip.Prefix{netip.PrefixFrom(tc.tunnel, 32)},
	}
}

type setup struct {
	client     *client.Client
	connectors []*testConnector
	app        *dnszone.Server // the apps' authoritative DNS
	host       *dnszone.Server // the host's resolver
	direct     *netstacktest.Dialer
}

func newSetup(t *testing.T, connectors int, mod func(*client.Config)) *setup {
	t.Helper()
	s := &setup{direct: &netstacktest.Dialer{}}
	s.app = dnstest.New(t,
		"app.example.com. 60 IN A 127.0.0.1",
		"www.app.example.com. 60 IN CNAME app.example.com.",
	)
	s.app.SetRcode("broken.app.example.com.", 2) // SERVFAIL
	s.host = dnstest.New(t, "other.test. 60 IN A 127.0.0.2")
	s.host.SetRcode("broken.test.", 2)
	key, err := wireguard.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	cfg := client.Config{
		WireGuard: &wireguard.Config{Interface: wireguard.Interface{
			PrivateKey: key,
			Addresses:  []netip.Prefix{netip.MustParsePrefix("10.90.0.2/32")},
		}},
		ListenAddr:    loopback,
		HostDNS:       []string{s.host.Addr},
		Direct:        s.direct.DialContext,
		ProbeInterval: 200 * time.Millisecond,
		ProbeTimeout:  300 * time.Millisecond,
	}
	for i := range connectors {
		tc := startConnector(t, i+1, key.PublicKey(), s.app.Addr)
		s.connectors = append(s.connectors, tc)
		cfg.WireGuard.Peers = append(cfg.WireGuard.Peers, tc.peerFor())
		cfg.WireGuard.Interface.DNS = append(cfg.WireGuard.Interface.DNS, tc.tunnel)
	}
	if mod != nil {
		mod(&cfg)
	}
	s.client, err = client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.client.Close() })
	return s
}

func (s *setup) forwarded() (n uint64) {
	for _, tc := range s.connectors {
		n += tc.conn.Stats().Netstack.TCPForwarded
	}
	return n
}

func TestDialAppByName(t *testing.T) {
	netstacktest.CheckLeaks(t)
	s := newSetup(t, 1, nil)
	echo := netstacktest.TCPEcho(t, "127.0.0.1:0")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := s.client.DialContext(ctx, "tcp", fmt.Sprintf("www.app.example.com:%d", echo.Port()))
	if err != nil {
		t.Fatal(err)
	}
	netstacktest.EchoTCP(t, c, 64<<10)
	c.Close()
	if n := s.forwarded(); n != 1 {
		t.Errorf("connector forwarded %d flows, want 1", n)
	}
	if n := s.direct.TCPDials.Load(); n != 0 {
		t.Errorf("%d direct dials, want 0", n)
	}
	learned := false
	for _, r := range s.connectors[0].conn.Routes() {
		learned = learned || (r.Source == "learned" && r.Domain == "www.app.example.com")
	}
	if !learned {
		t.Errorf("connector did not learn the route: %+v", s.connectors[0].conn.Routes())
	}
	netstacktest.WaitFor(t, func() bool { return slices.Contains(s.client.Routes(), netip.MustParsePrefix("127.0.0.1/32")) })

	// A name of no app: the host's resolver, and a direct connection.
	other := netstacktest.TCPEcho(t, "127.0.0.2:0")
	c, err = s.client.DialContext(ctx, "tcp", fmt.Sprintf("other.test:%d", other.Port()))
	if err != nil {
		t.Fatal(err)
	}
	netstacktest.EchoTCP(t, c, 1024)
	c.Close()
	if n := s.direct.TCPDials.Load(); n != 1 || s.forwarded() != 1 {
		t.Errorf("direct dials %d, forwarded %d; want 1 and 1", n, s.forwarded())
	}
}

func TestSplitResolver(t *testing.T) {
	netstacktest.CheckLeaks(t)
	s := newSetup(t, 1, nil)
	r := s.client.Resolver()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	before := s.app.Queries.Load()
	addrs, err := r.LookupNetIP(ctx, "ip4", "app.example.com")
	if err != nil || !slices.Equal(addrs, []netip.Addr{loopback}) {
		t.Fatalf("app name: %v %v", addrs, err)
	}
	if s.app.Queries.Load() == before {
		t.Error("the app name was not resolved by the connector")
	}
	hostBefore := s.host.Queries.Load()
	if addrs, err := r.LookupNetIP(ctx, "ip4", "other.test"); err != nil || len(addrs) != 1 {
		t.Fatalf("host name: %v %v", addrs, err)
	}
	if s.host.Queries.Load() == hostBefore {
		t.Error("the non-app name did not go to the host's resolver")
	}
	var dnsErr *net.DNSError
	if _, err := r.LookupNetIP(ctx, "ip4", "missing.app.example.com"); !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Errorf("missing app name: %v, want not found", err)
	}

	// The same over the DNS server a sidecar offers: rcodes intact.
	pc, ln := netstacktest.ListenUDPTCP(t)
	srv, err := s.client.ServeDNS(pc, ln)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for _, tc := range []struct{ name, rcode string }{
		{"app.example.com", "NOERROR"},
		{"missing.app.example.com", "NXDOMAIN"},
		{"broken.app.example.com", "SERVFAIL"},
		{"other.test", "NOERROR"},
		{"missing.test", "NXDOMAIN"},
		{"broken.test", "SERVFAIL"},
	} {
		for _, network := range []string{"udp", "tcp"} {
			c, err := net.Dial(network, pc.LocalAddr().String())
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			rcode, _, err := dnszone.Query(c, tc.name, "A")
			c.Close()
			if err != nil || rcode != tc.rcode {
				t.Errorf("%s over %s: %s %v, want %s", tc.name, network, rcode, err, tc.rcode)
			}
		}
	}
}

func TestIgnoreRoutesGoesDirect(t *testing.T) {
	netstacktest.CheckLeaks(t)
	s := newSetup(t, 1, func(c *client.Config) { c.IgnoreRoutes = true })
	echo := netstacktest.TCPEcho(t, "127.0.0.1:0")
	s.host.Add("app.example.com. 60 IN A 127.0.0.1") // the host's view of the name
	c, err := s.client.DialContext(context.Background(), "tcp", fmt.Sprintf("app.example.com:%d", echo.Port()))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if s.forwarded() != 0 || s.direct.TCPDials.Load() != 1 {
		t.Errorf("forwarded %d, direct %d; want 0 and 1", s.forwarded(), s.direct.TCPDials.Load())
	}
	if len(s.client.Routes()) != 0 {
		t.Errorf("routes with routing off: %v", s.client.Routes())
	}
}

// TestFailover: two connectors serve the app; when the one in use dies,
// new connections go through the other within 5 s, and a flow on the
// dead one ends instead of hanging.
func TestFailover(t *testing.T) {
	netstacktest.CheckLeaks(t)
	s := newSetup(t, 2, nil)
	echo := netstacktest.TCPEcho(t, "127.0.0.1:0")
	dst := fmt.Sprintf("app.example.com:%d", echo.Port())
	ctx := context.Background()

	c, err := s.client.DialContext(ctx, "tcp", dst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("x"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	var used, other *testConnector
	for _, tc := range s.connectors {
		if tc.conn.Stats().Netstack.TCPForwarded == 1 {
			used = tc
		} else {
			other = tc
		}
	}
	if used == nil || other == nil {
		t.Fatal("the flow did not go through exactly one connector")
	}

	killed := time.Now()
	used.conn.Close()
	// The open flow fails fast.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("read on a flow through a dead connector succeeded")
	} else if d := time.Since(killed); d > 5*time.Second {
		t.Errorf("flow through a dead connector ended after %v", d)
	}
	// New flows go through the other one.
	for {
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		c2, err := s.client.DialContext(dctx, "tcp", dst)
		cancel()
		if err == nil {
			netstacktest.EchoTCP(t, c2, 1024)
			c2.Close()
			break
		}
		if time.Since(killed) > 5*time.Second {
			t.Fatalf("no connection through the surviving connector within 5s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("failover took %v", time.Since(killed).Round(time.Millisecond))
	if other.conn.Stats().Netstack.TCPForwarded == 0 {
		t.Error("the surviving connector forwarded nothing")
	}
}

func netstackCfg(d *netstacktest.Dialer) netstack.Config { return netstack.Config{Dial: d.DialContext} }

// TestExitPeer: a peer with a default route carries what no app routes,
// instead of a direct connection; app routes still win.
func TestExitPeer(t *testing.T) {
	netstacktest.CheckLeaks(t)
	var exit *testConnector
	s := newSetup(t, 1, func(c *client.Config) {
		// An exit node that forwards loopback for the test (a real one
		// would route 0.0.0.0/0).
		exit = startConnectorWith(t, 9, c.WireGuard.Interface.PrivateKey.PublicKey(), "127.0.0.1:9",
			`[{"name": "exit", "connectors": ["*"], "routes": ["127.0.0.0/8"]}]`)
		p := exit.peerFor()
		p.AllowedIPs = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
		c.WireGuard.Peers = append(c.WireGuard.Peers, p)
	})
	other := netstacktest.TCPEcho(t, "127.0.0.2:0")
	c, err := s.client.DialContext(context.Background(), "tcp", other.String())
	if err != nil {
		t.Fatal(err)
	}
	netstacktest.EchoTCP(t, c, 1024)
	c.Close()
	if n := exit.conn.Stats().Netstack.TCPForwarded; n != 1 || s.direct.TCPDials.Load() != 0 {
		t.Errorf("exit forwarded %d, direct %d; want 1 and 0", n, s.direct.TCPDials.Load())
	}
	app := netstacktest.TCPEcho(t, "127.0.0.1:0")
	c, err = s.client.DialContext(context.Background(), "tcp", fmt.Sprintf("app.example.com:%d", app.Port()))
	if err != nil {
		t.Fatal(err)
	}
	netstacktest.EchoTCP(t, c, 1024)
	c.Close()
	if s.forwarded() != 1 || exit.conn.Stats().Netstack.TCPForwarded != 1 {
		t.Errorf("the app flow did not take the app connector: app %d, exit %d", s.forwarded(), exit.conn.Stats().Netstack.TCPForwarded)
	}
}
