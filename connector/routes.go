package connector

import (
	"net/netip"

	"go4.org/netipx"
)

// guardedRanges hold the connector host's own services (loopback) and
// cloud metadata endpoints (link-local, 169.254.169.254). A destination in
// them is forwarded only if a route lies entirely inside the range: an app
// must name 127.0.0.1/32, say; 0.0.0.0/0 does not reach the host's
// loopback.
var guardedRanges = []netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("fe80::/10"),
}

// neverRanges are never forwarded: they are not unicast destinations, or
// a host dial to them reaches something else (a dial to 0.0.0.0 connects
// to the local host; an IPv4-mapped IPv6 address to the IPv4 host).
var neverRanges = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("::/128"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("255.255.255.255/32"),
	netip.MustParsePrefix("ff00::/8"),
	netip.MustParsePrefix("::ffff:0:0/96"),
}

// forwardSet returns the destinations flows may be forwarded to, given the
// routes: the routes, less the guarded ranges (and the host's own
// addresses) except where a route lies inside one, less the never ranges.
func forwardSet(routes []netip.Prefix, hostAddrs []netip.Addr) *netipx.IPSet {
	guarded := guardedRanges
	for _, a := range hostAddrs {
		a = a.Unmap().WithZone("")
		guarded = append(guarded[:len(guarded):len(guarded)], netip.PrefixFrom(a, a.BitLen()))
	}
	var b netipx.IPSetBuilder
	for _, r := range routes {
		b.AddPrefix(r)
	}
	for _, g := range guarded {
		b.RemovePrefix(g)
	}
	for _, r := range routes {
		for _, g := range guarded {
			if r.Bits() >= g.Bits() && g.Contains(r.Addr()) {
				b.AddPrefix(r)
			}
		}
	}
	for _, n := range neverRanges {
		b.RemovePrefix(n)
	}
	s, _ := b.IPSet() // only invalid prefixes make errors; routes are validated
	return s
}
