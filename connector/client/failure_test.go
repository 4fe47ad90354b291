package client_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/apptype"
	"github.com/appconnector/appconnector/connector/client"
	"github.com/appconnector/appconnector/connector/dnstest"
	"github.com/appconnector/appconnector/connector/dnszone"
	"github.com/appconnector/appconnector/connector/wireguard"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// Failures the way they happen: a connector that stops answering without
// closing anything (a crash, a partition), modelled by a UDP relay on
// 127.0.0.1 between the client and the connector that can drop
// everything, or be pointed at a new connector.

type relay struct {
	front, back *net.UDPConn
	drop        atomic.Bool
	mu          sync.Mutex
	target      *net.UDPAddr
	client      *net.UDPAddr
	wg          sync.WaitGroup
}

func newRelay(t *testing.T, target netip.AddrPort) *relay {
	t.Helper()
	r := &relay{target: net.UDPAddrFromAddrPort(target)}
	var err error
	if r.front, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	if r.back, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	r.wg.Add(2)
	go func() { // client → connector
		defer r.wg.Done()
		b := make([]byte, 65535)
		for {
			n, from, err := r.front.ReadFromUDP(b)
			if err != nil {
				return
			}
			r.mu.Lock()
			r.client = from
			target := r.target
			r.mu.Unlock()
			if !r.drop.Load() {
				r.back.WriteToUDP(b[:n], target)
			}
		}
	}()
	go func() { // connector → client
		defer r.wg.Done()
		b := make([]byte, 65535)
		for {
			n, _, err := r.back.ReadFromUDP(b)
			if err != nil {
				return
			}
			r.mu.Lock()
			c := r.client
			r.mu.Unlock()
			if c != nil && !r.drop.Load() {
				r.front.WriteToUDP(b[:n], c)
			}
		}
	}()
	t.Cleanup(func() { r.front.Close(); r.back.Close(); r.wg.Wait() })
	return r
}

func (r *relay) addr() netip.AddrPort { return r.front.LocalAddr().(*net.UDPAddr).AddrPort() }

func (r *relay) retarget(a netip.AddrPort) {
	r.mu.Lock()
	r.target = net.UDPAddrFromAddrPort(a)
	r.mu.Unlock()
}

type relayed struct {
	*testConnector
	relay *relay
	n     int
}

// relayedSetup starts n connectors (each with its own upstream DNS
// server, so one can be broken) and a client that reaches them through
// relays.
func relayedSetup(t *testing.T, n int, upstreams []*dnszone.Server, host *dnszone.Server, mod func(*client.Config)) (*client.Client, []*relayed, wireguard.Key) {
	t.Helper()
	key, _ := wireguard.GeneratePrivateKey()
	cfg := client.Config{
		WireGuard: &wireguard.Config{Interface: wireguard.Interface{
			PrivateKey: key, Addresses: []netip.Prefix{netip.MustParsePrefix("10.90.0.2/32")}}},
		ListenAddr: loopback, HostDNS: []string{host.Addr}, Direct: (&netstacktest.Dialer{}).DialContext,
		ProbeInterval: 200 * time.Millisecond, ProbeTimeout: 300 * time.Millisecond,
	}
	var rs []*relayed
	for i := range n {
		tc := startConnector(t, i+1, key.PublicKey(), upstreams[i].Addr)
		r := &relayed{testConnector: tc, relay: newRelay(t, netip.AddrPortFrom(loopback, tc.conn.Port())), n: i + 1}
		p := tc.peerFor()
		p.Endpoint = r.relay.addr().String()
		cfg.WireGuard.Peers = append(cfg.WireGuard.Peers, p)
		cfg.WireGuard.Interface.DNS = append(cfg.WireGuard.Interface.DNS, tc.tunnel)
		rs = append(rs, r)
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, rs, key
}

func appUpstream(t *testing.T) *dnszone.Server {
	return dnstest.New(t, "app.example.com. 60 IN A 127.0.0.1", "*.app.example.com. 60 IN A 127.0.0.1")
}

// used returns the connector that forwarded the flows so far, and the
// other one.
func used(t *testing.T, rs []*relayed) (*relayed, *relayed) {
	t.Helper()
	if rs[0].conn.Stats().Netstack.TCPForwarded > 0 {
		return rs[0], rs[1]
	}
	if rs[1].conn.Stats().Netstack.TCPForwarded > 0 {
		return rs[1], rs[0]
	}
	t.Fatal("no connector forwarded the flow")
	return nil, nil
}

// TestPartitionFailover: the connector in use stops answering. Its open
// flow ends with a reset (not a clean end of stream that could pass for a
// complete response), and new connections, by name and by the address a
// program resolved earlier, go through the other connector within 5 s.
func TestPartitionFailover(t *testing.T) {
	netstacktest.CheckLeaks(t)
	// The echo server first, so it is stopped after the connectors: the
	// one cut off still holds its upstream side of the flow until closed.
	echo := netstacktest.TCPEcho(t, "127.0.0.1:0")
	c, rs, _ := relayedSetup(t, 2, []*dnszone.Server{appUpstream(t), appUpstream(t)}, dnstest.New(t), nil)
	ctx := context.Background()
	addrs, err := c.Resolver().LookupNetIP(ctx, "ip4", "app.example.com")
	if err != nil {
		t.Fatal(err)
	}
	byAddr := netip.AddrPortFrom(addrs[0], echo.Port()).String()
	flow, err := c.DialContext(ctx, "tcp", byAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer flow.Close()
	flow.Write([]byte("x"))
	flow.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := flow.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	dead, alive := used(t, rs)

	dead.relay.drop.Store(true)
	start := time.Now()
	flow.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = flow.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("read on a flow through a dead connector: %v, want a reset", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the flow ended after %v", d)
	}
	for _, dst := range []string{byAddr, fmt.Sprintf("app.example.com:%d", echo.Port())} {
		for {
			dctx, cancel := context.WithTimeout(ctx, time.Second)
			conn, err := c.DialContext(dctx, "tcp", dst)
			cancel()
			if err == nil {
				netstacktest.EchoTCP(t, conn, 100)
				conn.Close()
				break
			}
			if time.Since(start) > 5*time.Second {
				t.Fatalf("%s: no connection through the surviving connector within 5s: %v", dst, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if alive.conn.Stats().Netstack.TCPForwarded < 2 {
		t.Errorf("the surviving connector forwarded %d flows", alive.conn.Stats().Netstack.TCPForwarded)
	}
}

// TestQuestionFailover: a question asked right after a connector stopped
// answering (before the probes notice) moves to the other within itself;
// and a connector whose upstream DNS fails (but which answers probes) is
// passed over for one that can answer.
func TestQuestionFailover(t *testing.T) {
	netstacktest.CheckLeaks(t)
	broken := dnstest.New(t)
	broken.SetRcode("q2.app.example.com.", dns.RcodeServerFailure)
	c, rs, _ := relayedSetup(t, 2, []*dnszone.Server{broken, appUpstream(t)}, dnstest.New(t), nil)
	r := c.Resolver()
	for range 10 { // whichever connector is preferred, the answer comes
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		addrs, err := r.LookupNetIP(ctx, "ip4", "q2.app.example.com")
		cancel()
		if err != nil || len(addrs) != 1 {
			t.Fatalf("with one connector's upstream failing: %v %v", addrs, err)
		}
	}
	rs[1].relay.drop.Store(true) // the good one goes silent...
	rs[0].relay.drop.Store(false)
	// ...and the broken one's answers are passed on rather than none.
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := r.LookupNetIP(ctx, "ip4", "q3.app.example.com")
	var de *net.DNSError
	if !errors.As(err, &de) {
		t.Errorf("with the good connector silent: %v, want a DNS error from the other", err)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("answer after %v: the question did not move on", d)
	}
}

// TestRouteWatchAfterRestart: a connector crashes (nothing closes) and a
// new one with more domains comes up at the same address; the client
// follows its routes again instead of holding the dead stream forever.
func TestRouteWatchAfterRestart(t *testing.T) {
	netstacktest.CheckLeaks(t)
	up := dnstest.New(t, "app.example.com. 60 IN A 127.0.0.1", "x.new.test. 60 IN A 127.0.0.1")
	host := dnstest.New(t, "x.new.test. 60 IN A 127.0.0.3")
	c, rs, clientKey := relayedSetup(t, 1, []*dnszone.Server{up}, host, nil)
	r := c.Resolver()
	ctx := context.Background()
	if a, err := r.LookupNetIP(ctx, "ip4", "x.new.test"); err != nil || a[0] != netip.MustParseAddr("127.0.0.3") {
		t.Fatalf("before: %v %v", a, err)
	}
	rs[0].relay.drop.Store(true)
	rs[0].conn.Close() // its goodbyes are lost
	policy, _ := apptype.ParsePolicy("p", []byte(`[{"name": "web", "connectors": ["*"],
		"domains": ["app.example.com", "*.new.test"], "allowPrivate": ["127.0.0.1/32"]}]`))
	c2, err := connector.New(connector.Config{
		WireGuard: &wireguard.Config{
			Interface: wireguard.Interface{PrivateKey: rs[0].key, Addresses: []netip.Prefix{netip.PrefixFrom(rs[0].tunnel, 24)}},
			Peers:     []wireguard.Peer{{PublicKey: clientKey.PublicKey(), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.90.0.2/32")}}},
		},
		ListenAddr: loopback, Policy: policy, DNSUpstreams: []string{up.Addr},
		Netstack: netstackCfg(&netstacktest.Dialer{}),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	netstacktest.WaitFor(t, func() bool { return !c.Health()[0].Healthy }) // the client noticed
	rs[0].relay.retarget(netip.AddrPortFrom(loopback, c2.Port()))
	rs[0].relay.drop.Store(false)
	deadline := time.Now().Add(40 * time.Second) // WireGuard may take 15 s to re-handshake
	for {
		a, err := r.LookupNetIP(ctx, "ip4", "x.new.test")
		if err == nil && a[0] == netip.MustParseAddr("127.0.0.1") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("40 s after the connector came back, x.new.test still resolves %v %v: routes not followed", a, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestDNSFloodBounded: questions to a connector that does not answer pin
// a bounded number of goroutines; the excess is answered SERVFAIL at once.
func TestDNSFloodBounded(t *testing.T) {
	netstacktest.CheckLeaks(t)
	c, rs, _ := relayedSetup(t, 1, []*dnszone.Server{appUpstream(t)}, dnstest.New(t), nil)
	rs[0].relay.drop.Store(true)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := c.ServeDNS(pc, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	q, err := net.Dial("udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	base := runtime.NumGoroutine()
	peak := 0
	for i := range 5000 {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("n%d.app.example.com.", i), dns.TypeA)
		b, _ := m.Pack()
		q.Write(b)
		if i%50 == 0 {
			peak = max(peak, runtime.NumGoroutine()-base)
		}
	}
	// A question being answered holds a goroutine; the cap on questions
	// in flight (256) bounds them, whatever the flood: beyond it the
	// reader answers SERVFAIL itself. (miekg/dns's server started one per
	// datagram before any cap: peaks of 400 to 3,000 by scheduling luck.)
	if peak > 300 {
		t.Errorf("%d goroutines above baseline during a flood of 5,000 questions", peak)
	}
	t.Logf("peak: %d goroutines above baseline", peak)
}

// TestCloseIsPrompt: Close does not wait out questions to a silent
// connector, and the client is closed afterwards.
func TestCloseIsPrompt(t *testing.T) {
	netstacktest.CheckLeaks(t)
	c, rs, _ := relayedSetup(t, 1, []*dnszone.Server{appUpstream(t)}, dnstest.New(t), nil)
	rs[0].relay.drop.Store(true)
	go c.Resolver().LookupNetIP(context.Background(), "ip4", "slow.app.example.com")
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	c.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v", d)
	}
	if _, err := c.DialContext(context.Background(), "tcp", "127.0.0.1:9"); !errors.Is(err, net.ErrClosed) {
		t.Errorf("dial after Close: %v", err)
	}
	for _, network := range []string{"", "ip", "unix"} {
		if _, err := c.DialContext(context.Background(), network, "app.example.com:80"); err == nil {
			t.Errorf("network %q accepted", network)
		}
	}
}

// A connector whose DNS upstreams fail says so in its probe answers; the
// client then asks another connector for app names, without touching
// flows through the first.
func TestUpstreamFailureMovesQuestions(t *testing.T) {
	netstacktest.CheckLeaks(t)
	dead := dnstest.New(t)
	deadAddr := dead.Addr
	dead.Close()
	good := dnstest.New(t, "q.app.example.com. 60 IN A 127.0.0.1")
	key, err := wireguard.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	shortWindow := func(c *connector.Config) { c.DNSHealthWindow = 300 * time.Millisecond }
	sick := startConnectorWith(t, 1, key.PublicKey(), deadAddr, appPolicy, shortWindow)
	well := startConnectorWith(t, 2, key.PublicKey(), good.Addr, appPolicy, shortWindow)
	c, err := client.New(client.Config{
		WireGuard: &wireguard.Config{
			Interface: wireguard.Interface{PrivateKey: key, Addresses: []netip.Prefix{netip.MustParsePrefix("10.90.0.2/32")},
				DNS: []netip.Addr{sick.tunnel, well.tunnel}},
			Peers: []wireguard.Peer{sick.peerFor(), well.peerFor()},
		},
		ListenAddr: loopback, Direct: (&netstacktest.Dialer{}).DialContext,
		ProbeInterval: 100 * time.Millisecond, ProbeTimeout: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	netstacktest.WaitFor(t, func() bool {
		h := c.Health()
		return len(h) == 2 && h[0].Healthy && h[0].DNSDown && h[1].Healthy && !h[1].DNSDown
	})
	before := sick.conn.Stats().DNS
	r := c.Resolver()
	for range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		addrs, err := r.LookupNetIP(ctx, "ip4", "q.app.example.com")
		cancel()
		if err != nil || len(addrs) != 1 {
			t.Fatalf("lookup with one connector's upstream down: %v %v", addrs, err)
		}
	}
	if after := sick.conn.Stats().DNS; after.ServFail != before.ServFail || after.Answered != before.Answered {
		t.Errorf("the connector whose upstream is down was asked for app names: %+v → %+v", before, after)
	}
}

// logLines returns the lines of a text log whose message is msg.
func logLines(lb *netstacktest.SyncBuffer, msg string) []string {
	var out []string
	for _, l := range strings.Split(lb.String(), "\n") {
		if strings.Contains(l, "msg=\""+msg+"\"") {
			out = append(out, l)
		}
	}
	return out
}

// TestConnectorUpDownLines: the client logs one line per connector when
// it is first heard from and one when it stops answering, each naming
// the connector (key, tunnel address, endpoint) and its round trip, and
// nothing per probe in between.
func TestConnectorUpDownLines(t *testing.T) {
	netstacktest.CheckLeaks(t)
	var logs netstacktest.SyncBuffer
	s := newSetup(t, 2, func(c *client.Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	netstacktest.WaitFor(t, func() bool { return len(logLines(&logs, "connector up")) == 2 })
	for i, tc := range s.connectors {
		want := []string{"peer=" + tc.key.PublicKey().String()[:8], "tunnel=" + tc.tunnel.String(),
			"endpoint=" + tc.peerFor().Endpoint, "rtt="}
		found := false
		for _, l := range logLines(&logs, "connector up") {
			if strings.Contains(l, want[0]) {
				found = true
				for _, w := range want {
					if !strings.Contains(l, w) {
						t.Errorf("connector %d: up line %q lacks %q", i+1, l, w)
					}
				}
			}
		}
		if !found {
			t.Errorf("connector %d: no up line", i+1)
		}
	}
	time.Sleep(5 * 200 * time.Millisecond) // five more probes each
	if n := len(logLines(&logs, "connector up")); n != 2 {
		t.Errorf("%d up lines after more probes, want 2", n)
	}
	s.connectors[0].conn.Close()
	netstacktest.WaitFor(t, func() bool { return len(logLines(&logs, "connector down")) == 1 })
	down := logLines(&logs, "connector down")[0]
	for _, w := range []string{"level=WARN", "tunnel=" + s.connectors[0].tunnel.String(), "err="} {
		if !strings.Contains(down, w) {
			t.Errorf("down line %q lacks %q", down, w)
		}
	}
	if n := len(logLines(&logs, "connector up")); n != 2 {
		t.Errorf("%d up lines, want 2: the other connector stayed up", n)
	}
}
