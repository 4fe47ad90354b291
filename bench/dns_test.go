package main

import (
	"context"
	"net"
	"net/netip"
	"runtime"
	"runtime/debug"
	"slices"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/dnstest"
	"github.com/appconnector/appconnector/connector/wgconf"
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
	up, err := dnstest.Start(records...)
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
		rcode, addrs, err := dnstest.Query(c, names[i], "A")
		c.Close()
		if err != nil || rcode != "NOERROR" || len(addrs) != 1 {
			b.Fatalf("%s: %s %v %v", names[i], rcode, addrs, err)
		}
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
	up, err := dnstest.Start(records...)
	if err != nil {
		b.Fatal(err)
	}
	serverKey, _ := wgconf.GeneratePrivateKey()
	clientKey, _ := netstacktest.NewPrivateKey()
	policy, err := connector.ParsePolicy("bench", []byte(`[{"name": "bench", "connectors": ["*"], "domains": ["*.bench.example"]}]`))
	if err != nil {
		b.Fatal(err)
	}
	connV4 := netip.MustParsePrefix("10.95.0.1/24")
	conn, err = connector.New(connector.Config{
		WireGuard: &wgconf.Config{
			Interface: wgconf.Interface{PrivateKey: serverKey, Addresses: []netip.Prefix{connV4}},
			Peers:     []wgconf.Peer{{PublicKey: wgconf.Key(clientKey.Public()), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.95.0.2/32")}}},
		},
		ListenAddr:   loopback,
		Policy:       policy,
		DNSUpstreams: []string{up.Addr},
		MaxLearned:   max(maxRoutes, 1000), MaxLearnedPerApp: max(maxRoutes, 1000),
		// What is measured is learning itself, as fast as one peer asks,
		// not the per-peer learning rate the connector enforces.
		LearnRate: 1e9, LearnBurst: max(maxRoutes, 1_000_000),
	})
	if err != nil {
		b.Fatal(err)
	}
	client, err := netstacktest.New(netstacktest.Config{
		PrivateKey: clientKey,
		Addresses:  []netip.Prefix{netip.MustParsePrefix("10.95.0.2/32")},
		Remotes: []netstacktest.RemotePeer{{
			PublicKey: netstacktest.Key(serverKey.PublicKey()), Endpoint: netip.AddrPortFrom(loopback, conn.Port()),
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
		rcode, addrs, err := dnstest.Query(c, name, "A")
		c.Close()
		if err != nil || wantAddr && (rcode != "NOERROR" || len(addrs) != 1) {
			b.Fatalf("%s: %s %v %v", name, rcode, addrs, err)
		}
	}
	ask("warmup.bench.example.", false) // brings the WireGuard session up
	return ask, conn, func() {
		client.Close()
		conn.Close()
		up.Close()
	}
}
