package connector

import (
	"net/netip"
	"slices"

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
//
// NAT64 (64:ff9b::/96, RFC 6052) forms count as the IPv4 addresses they
// embed: a route such as 64:ff9b::/96 means the IPv4 internet through a
// NAT64 gateway, not 64:ff9b::7f00:1 (the gateway's loopback) or
// 64:ff9b::a9fe:a9fe (its metadata service). The NAT64 forms of the
// guarded ranges, of the host's addresses, of the never ranges and of every
// range a DNS answer may not teach (RFC 1918 and the rest, learn.go) are
// guarded too; RFC 6052 forbids those forms anyway.
func forwardSet(routes []netip.Prefix, hostAddrs []netip.Addr) *netipx.IPSet {
	guarded := slices.Clone(guardedRanges)
	for _, a := range hostAddrs {
		a = a.Unmap().WithZone("")
		guarded = append(guarded, netip.PrefixFrom(a, a.BitLen()))
	}
	var v4 []netip.Prefix
	for _, g := range guarded {
		if g.Addr().Is4() {
			v4 = append(v4, g)
		}
	}
	for _, n := range neverRanges {
		if n.Addr().Is4() {
			v4 = append(v4, n)
		}
	}
	for _, u := range unsafeRanges {
		if u.prefix.Addr().Is4() {
			v4 = append(v4, u.prefix)
		}
	}
	for _, p := range v4 {
		guarded = append(guarded, nat64Of(p))
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

// nat64Of is the NAT64 form (64:ff9b::/96) of IPv4 prefix p.
func nat64Of(p netip.Prefix) netip.Prefix {
	b := nat64.Addr().As16()
	v4 := p.Addr().As4()
	copy(b[12:], v4[:])
	return netip.PrefixFrom(netip.AddrFrom16(b), 96+p.Bits())
}
