package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/apptype"
	"github.com/appconnector/appconnector/connector/dnszone"
	"github.com/appconnector/appconnector/connector/wireguard"
	"github.com/appconnector/appconnector/connector/wireguard/wgtest"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// DNS learn latency: a question for a new name of an app, asked through
// the tunnel, answered by the connector after it resolved the name
// upstream and installed the route; against the same question asked of
// the upstream directly. Median of 1,000:
//
//	go test ./bench -run X -bench DNS -benchtime 1000x

func reportLatencies(b *testing.B, d []time.Duration) {
	slices.Sort(d)
	b.ReportMetric(float64(d[len(d)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(d[len(d)*99/100].Microseconds()), "p99-µs")
}

func BenchmarkDNSDirect(b *testing.B) {
	names, records := benchZone(b.N)
	benchDirect(b, records, func(c net.Conn, i int) {
		rcode, addrs, err := dnszone.Query(c, names[i], "A")
		if err != nil || rcode != "NOERROR" || len(addrs) != 1 {
			b.Fatalf("%s: %s %v %v", names[i], rcode, addrs, err)
		}
	})
}

// benchDirect serves records from an upstream and times ask(c, i), a
// question on a new UDP socket to it, for i in [0, b.N).
func benchDirect(b *testing.B, records []string, ask func(c net.Conn, i int)) {
	up, err := dnszone.Start(records...)
	if err != nil {
		b.Fatal(err)
	}
	defer up.Close()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		c, err := net.Dial("udp", up.Addr)
		if err != nil {
			b.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		ask(c, i)
		c.Close()
		lat = append(lat, time.Since(start))
	}
	reportLatencies(b, lat)
}

func BenchmarkDNSLearnThroughConnector(b *testing.B) {
	names, records := benchZone(b.N)
	ask, conn, stop := dnsSetup(b, records, b.N)
	defer stop()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		ask(names[i], true)
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	reportLatencies(b, lat)
	if n := len(conn.Routes()); n != b.N {
		b.Fatalf("%d routes learned for %d names", n, b.N)
	}
}

// The same for HTTPS questions (type 65) whose records carry an ipv4hint
// and an ipv6hint, which the connector learns:
//
//	go test ./bench -run X -bench DNS.*HTTPS -benchtime 1000x
func BenchmarkDNSDirectHTTPS(b *testing.B) {
	names, records := httpsZone(b.N)
	benchDirect(b, records, func(c net.Conn, i int) { askHTTPS(b, c, names[i]) })
}

func BenchmarkDNSLearnHTTPSThroughConnector(b *testing.B) {
	names, records := httpsZone(b.N)
	_, conn, dial, stop := dnsSetupDial(b, records, 2*b.N)
	defer stop()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		c := dial()
		askHTTPS(b, c, names[i])
		c.Close()
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	reportLatencies(b, lat)
	if n := len(conn.Routes()); n != 2*b.N {
		b.Fatalf("%d routes learned for %d names with two hints each", n, b.N)
	}
}

// httpsZone is n names with an HTTPS record each: ALPN, an IPv4 and an
// IPv6 hint.
func httpsZone(n int) (names []string, records []string) {
	for i := range n {
		name := fmt.Sprintf("h%d.bench.example.", i)
		names = append(names, name)
		records = append(records, fmt.Sprintf("%s 60 IN HTTPS 1 . alpn=h2,h3 ipv4hint=11.%d.%d.%d ipv6hint=2001:db8::%x",
			name, i>>16&255, i>>8&255, i&255, i))
	}
	return names, records
}

// askHTTPS asks for name's HTTPS record on c and checks it has both hints.
func askHTTPS(b *testing.B, c net.Conn, name string) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	co := &dns.Conn{Conn: c, UDPSize: 1232}
	m := new(dns.Msg).SetQuestion(name, dns.TypeHTTPS)
	m.SetEdns0(1232, false)
	if err := co.WriteMsg(m); err != nil {
		b.Fatal(err)
	}
	r, err := co.ReadMsg()
	if err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || !strings.Contains(r.Answer[0].String(), "ipv6hint") {
		b.Fatalf("%s: %v %v", name, r, err)
	}
}

// BenchmarkDNSLearn100kMemory learns 100,000 routes through the tunnel
// and reports what they cost in heap and in RSS:
//
//	go test ./bench -run X -bench Learn100kMemory -benchtime 1x
func BenchmarkDNSLearn100kMemory(b *testing.B) {
	const n = 100_000
	names, records := benchZone(n)
	ask, conn, stop := dnsSetup(b, records, n)
	defer stop()
	runtime.GC()
	debug.FreeOSMemory()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	rss0 := netstacktest.RSSKiB()
	b.ResetTimer()
	for i := range n {
		ask(names[i], true)
	}
	b.StopTimer()
	runtime.GC()
	debug.FreeOSMemory() // what is left in RSS is held, not garbage
	runtime.ReadMemStats(&after)
	if got := len(conn.Routes()); got != n {
		b.Fatalf("%d routes learned for %d names", got, n)
	}
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heap-B/route")
	b.Logf("heap in use %d→%d MiB, stacks %d→%d MiB, sys %d→%d MiB, goroutines %d",
		before.HeapInuse>>20, after.HeapInuse>>20, before.StackInuse>>20, after.StackInuse>>20, before.Sys>>20, after.Sys>>20, runtime.NumGoroutine())
	b.ReportMetric(float64(netstacktest.RSSKiB()-rss0)/1024, "RSS-growth-MiB")
	b.ReportMetric(float64(netstacktest.RSSKiB())/1024, "RSS-MiB")
}

// dnsSetup starts an upstream with records, a connector that learns up to
// maxRoutes, and a client; ask sends one question through the tunnel.
func dnsSetup(b *testing.B, records []string, maxRoutes int) (ask func(name string, wantAddr bool), conn *connector.Connector, stop func()) {
	ask, conn, _, stop = dnsSetupDial(b, records, maxRoutes)
	return ask, conn, stop
}

// dnsSetupDial is dnsSetup; dial also opens a UDP socket to the
// connector's DNS through the tunnel.
func dnsSetupDial(b *testing.B, records []string, maxRoutes int) (ask func(name string, wantAddr bool), conn *connector.Connector, dial func() net.Conn, stop func()) {
	up, err := dnszone.Start(records...)
	if err != nil {
		b.Fatal(err)
	}
	serverKey, _ := wireguard.GeneratePrivateKey()
	clientKey, _ := wireguard.GeneratePrivateKey()
	policy, err := apptype.ParsePolicy("bench", []byte(`[{"name": "bench", "connectors": ["*"], "domains": ["*.bench.example"]}]`))
	if err != nil {
		b.Fatal(err)
	}
	connV4 := netip.MustParsePrefix("10.95.0.1/24")
	conn, err = connector.New(connector.Config{
		WireGuard: &wireguard.Config{
			Interface: wireguard.Interface{PrivateKey: serverKey, Addresses: []netip.Prefix{connV4}},
			Peers:     []wireguard.Peer{{PublicKey: clientKey.PublicKey(), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.95.0.2/32")}}},
		},
		ListenAddr:   loopback,
		Policy:       policy,
		DNSUpstreams: []string{up.Addr},
		MaxRoutes:    max(maxRoutes, 1000), MaxRoutesPerApp: max(maxRoutes, 1000),
		// What is measured is learning itself, as fast as one peer asks,
		// not the per-peer learning rate the connector enforces.
		LearnRate: 1e9, LearnBurst: max(maxRoutes, 1_000_000),
	})
	if err != nil {
		b.Fatal(err)
	}
	client, err := wgtest.New(wgtest.Config{
		PrivateKey: clientKey,
		Addresses:  []netip.Prefix{netip.MustParsePrefix("10.95.0.2/32")},
		Remotes: []wireguard.Peer{{
			PublicKey: serverKey.PublicKey(), Endpoint: netip.AddrPortFrom(loopback, conn.Port()).String(),
			AllowedIPs: []netip.Prefix{connV4},
		}},
	})
	if err != nil {
		b.Fatal(err)
	}
	dnsAddr := netip.AddrPortFrom(connV4.Addr(), 53).String()
	ask = func(name string, wantAddr bool) {
		c, err := client.DialContext(context.Background(), "udp", dnsAddr)
		if err != nil {
			b.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		rcode, addrs, err := dnszone.Query(c, name, "A")
		c.Close()
		if err != nil || wantAddr && (rcode != "NOERROR" || len(addrs) != 1) {
			b.Fatalf("%s: %s %v %v", name, rcode, addrs, err)
		}
	}
	dial = func() net.Conn {
		c, err := client.DialContext(context.Background(), "udp", dnsAddr)
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	ask("warmup.bench.example.", false) // brings the WireGuard session up
	return ask, conn, dial, func() {
		client.Close()
		conn.Close()
		up.Close()
	}
}
