package connector

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector/apptype"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// BenchmarkLearn100k learns 100,000 routes (one per name, as a wildcard
// app flooded with distinct names would) and reports the memory they hold
// and the cost of a forwarding decision and of an advertisement with
// that many routes:
//
//	go test ./connector -run X -bench Learn100k -benchtime 1x
func BenchmarkLearn100k(b *testing.B) {
	const n = 100_000
	for range b.N {
		tbl := newRouteTable(tableConfig{ttl: time.Hour, maxLearned: n, maxPerApp: n, own: map[netip.Addr]bool{}})
		tbl.setApps([]apptype.App{{Name: "w", Domains: []string{"*.flood.example"}, Approval: apptype.ApprovalAuto}})
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		rssBefore := netstacktest.RSSKiB()
		start := time.Now()
		for i := range n {
			a := netip.AddrFrom4([4]byte{11, byte(i >> 16), byte(i >> 8), byte(i)})
			tbl.learn(anyPeer, fmt.Sprintf("n%d.flood.example", i), ttl60([]netip.Addr{a}))
		}
		learnTime := time.Since(start)
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(learnTime.Nanoseconds())/n, "ns/learn")
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heap-B/route")
		b.ReportMetric(float64(netstacktest.RSSKiB()-rssBefore)/1024, "RSS-MiB")

		probe := netip.AddrFrom4([4]byte{11, 0, 200, 1})
		start = time.Now()
		const lookups = 100_000
		for range lookups {
			if !tbl.allow(anyPeer, probe) {
				b.Fatal("learned route not allowed")
			}
		}
		b.ReportMetric(float64(time.Since(start).Nanoseconds())/lookups, "ns/allow")
		start = time.Now()
		_, adv0 := tbl.advertised(anyPeer)
		adv := adv0.prefixes
		b.ReportMetric(float64(time.Since(start).Milliseconds()), "ms/advertise")
		if len(adv) == 0 {
			b.Fatal("nothing advertised")
		}
	}
}
