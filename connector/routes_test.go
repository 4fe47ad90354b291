package connector

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"go4.org/netipx"
)

func TestForwardSet(t *testing.T) {
	for _, tc := range []struct {
		name   string
		routes []string
		host   []string
		in     []string
		out    []string
	}{
		{
			name:   "everything",
			routes: []string{"0.0.0.0/0", "::/0"},
			in:     []string{"8.8.8.8", "10.1.2.3", "2001:db8::1", "192.168.1.1"},
			out: []string{"127.0.0.1", "127.255.255.254", "::1", "169.254.169.254", "fe80::1", "0.0.0.0", "0.1.2.3",
				"::", "224.0.0.1", "239.1.1.1", "255.255.255.255", "ff02::1", "::ffff:127.0.0.1", "::ffff:8.8.8.8"},
		},
		{
			name:   "explicit loopback",
			routes: []string{"127.0.0.1/32", "::1/128"},
			in:     []string{"127.0.0.1", "::1"},
			out:    []string{"127.0.0.2", "::ffff:127.0.0.1", "8.8.8.8"},
		},
		{
			name:   "all of loopback named",
			routes: []string{"127.0.0.0/8"},
			in:     []string{"127.0.0.1", "127.9.9.9"},
			out:    []string{"128.0.0.1"},
		},
		{
			name:   "metadata only when named",
			routes: []string{"169.0.0.0/8", "169.254.169.254/32"},
			in:     []string{"169.1.1.1", "169.254.169.254"},
			out:    []string{"169.254.0.1"},
		},
		{
			name:   "named loopback inside a wider route",
			routes: []string{"0.0.0.0/0", "127.0.0.1/32", "126.0.0.0/8", "127.0.0.0/8"},
			in:     []string{"127.0.0.1", "127.0.0.9", "126.1.1.1"},
		},
		{
			name:   "host's own addresses",
			routes: []string{"10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"},
			host:   []string{"10.0.0.5", "192.0.2.7", "2001:db8::5", "fe80::1%eth0"},
			in:     []string{"10.0.0.4", "10.0.0.6", "192.0.2.7", "2001:db8::4"},
			out:    []string{"10.0.0.5", "2001:db8::5"},
		},
		{
			// Issue 11, finding 9: NAT64 forms of protected ranges.
			name:   "NAT64 prefix",
			routes: []string{"64:ff9b::/96"},
			host:   []string{"203.0.113.5"},
			in:     []string{"64:ff9b::808:808", "64:ff9b::cb00:7106"},
			out: []string{"64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::a00:1", "64:ff9b::c0a8:101", "64:ff9b::ac10:1",
				"64:ff9b::6440:1", "64:ff9b::cb00:7105", "64:ff9b::e000:1", "64:ff9b::", "64:ff9b::ffff:ffff"},
		},
		{
			name:   "NAT64 forms under everything",
			routes: []string{"::/0"},
			in:     []string{"64:ff9b::808:808"},
			out:    []string{"64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe"},
		},
		{
			name:   "NAT64 form named",
			routes: []string{"64:ff9b::/96", "64:ff9b::7f00:1/128", "64:ff9b::a00:0/104"},
			in:     []string{"64:ff9b::7f00:1", "64:ff9b::a01:203"},
			out:    []string{"64:ff9b::7f00:2"},
		},
		{
			name:   "none",
			routes: nil,
			out:    []string{"8.8.8.8", "127.0.0.1"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var routes []netip.Prefix
			for _, r := range tc.routes {
				routes = append(routes, netip.MustParsePrefix(r))
			}
			var host []netip.Addr
			for _, h := range tc.host {
				host = append(host, netip.MustParseAddr(h))
			}
			set := forwardSet(routes, host)
			for _, a := range tc.in {
				if !set.Contains(netip.MustParseAddr(a)) {
					t.Errorf("%s not forwarded", a)
				}
			}
			for _, a := range tc.out {
				if set.Contains(netip.MustParseAddr(a)) {
					t.Errorf("%s forwarded", a)
				}
			}
		})
	}
}

// routeDiff's added and removed turn the earlier set into the later one.
func TestRouteDiff(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	set := func() []netip.Prefix {
		var b netipx.IPSetBuilder
		for range rnd.IntN(40) {
			b.Add(netip.AddrFrom4([4]byte{10, 0, byte(rnd.IntN(4)), byte(rnd.IntN(16))}))
		}
		if rnd.IntN(2) == 0 {
			b.AddPrefix(netip.MustParsePrefix("2001:db8::/126"))
		}
		s, _ := b.IPSet()
		return s.Prefixes()
	}
	for range 500 {
		prev, cur := set(), set()
		d := routeDiff(7, advertisement{prefixes: prev}, advertisement{prefixes: cur})
		var got []netip.Prefix
		for _, p := range prev {
			if !slices.Contains(d.Removed, p) {
				got = append(got, p)
			}
		}
		got = append(got, d.Added...)
		slices.SortFunc(got, func(a, b netip.Prefix) int {
			if prefixLess(a, b) {
				return -1
			}
			if prefixLess(b, a) {
				return 1
			}
			return 0
		})
		if !slices.Equal(got, cur) {
			t.Fatalf("prev %v + diff %+v = %v, want %v", prev, d, got, cur)
		}
	}
}
