package connector

import (
	"errors"
	"net/netip"

	"github.com/miekg/dns"
)

// maxChain is the longest CNAME chain followed from a question name.
const maxChain = 10

// Reasons an answer yields no routes at all.
var (
	errChainLoop      = errors.New("cname chain loops")
	errChainTooLong   = errors.New("cname chain longer than 10")
	errChainAmbiguous = errors.New("cname chain is ambiguous")
)

// chainAddrs returns the A and AAAA addresses that answer qname: those
// owned by qname or by a name reached from it through the answer's CNAME
// records. Records off that chain are ignored, whatever they claim. A loop,
// a chain longer than maxChain, or an ambiguous chain (a name with two
// CNAME targets, or with a CNAME and addresses) is an error and yields no
// addresses.
func chainAddrs(qname string, answer []dns.RR) ([]netip.Addr, error) {
	cname := make(map[string]string)
	hasAddr := make(map[string]bool)
	for _, rr := range answer {
		h := rr.Header()
		if h.Class != dns.ClassINET {
			continue
		}
		owner := canonicalName(h.Name)
		switch rr := rr.(type) {
		case *dns.CNAME:
			target := canonicalName(rr.Target)
			if prev, ok := cname[owner]; ok && prev != target {
				return nil, errChainAmbiguous
			}
			cname[owner] = target
		case *dns.A, *dns.AAAA:
			hasAddr[owner] = true
		}
	}
	onChain := map[string]bool{}
	name := canonicalName(qname)
	for hops := 0; ; hops++ {
		if onChain[name] {
			return nil, errChainLoop
		}
		onChain[name] = true
		next, ok := cname[name]
		if !ok {
			break
		}
		if hasAddr[name] {
			return nil, errChainAmbiguous
		}
		if hops == maxChain {
			return nil, errChainTooLong
		}
		name = next
	}
	var out []netip.Addr
	for _, rr := range answer {
		if rr.Header().Class != dns.ClassINET || !onChain[canonicalName(rr.Header().Name)] {
			continue
		}
		var a netip.Addr
		switch rr := rr.(type) {
		case *dns.A:
			a, _ = netip.AddrFromSlice(rr.A.To4())
		case *dns.AAAA:
			a, _ = netip.AddrFromSlice(rr.AAAA.To16())
		default:
			continue
		}
		if a.IsValid() {
			out = append(out, a)
		}
	}
	return out, nil
}

// chainNames returns qname and the names reached from it through the
// answer's CNAME records, nearest first, at most maxChain+1 of them. An
// ambiguous chain (a name with two targets) yields every target, so that
// no name a client may follow is missed; a loop ends it.
func chainNames(qname string, answer []dns.RR) []string {
	targets := make(map[string][]string)
	for _, rr := range answer {
		if c, ok := rr.(*dns.CNAME); ok && c.Hdr.Class == dns.ClassINET {
			owner := canonicalName(c.Hdr.Name)
			targets[owner] = append(targets[owner], canonicalName(c.Target))
		}
	}
	names := []string{canonicalName(qname)}
	seen := map[string]bool{names[0]: true}
	for i := 0; i < len(names) && len(names) <= maxChain; i++ {
		for _, t := range targets[names[i]] {
			if !seen[t] {
				seen[t] = true
				names = append(names, t)
			}
		}
	}
	return names
}

// unsafeRanges are answers that are not learned unless an app's
// allowPrivate names them: they point into the connector's own network or
// host rather than at an application on the internet, so learning them
// would let a DNS answer open internal services to peers (DNS rebinding).
var unsafeRanges = []struct {
	prefix netip.Prefix
	why    string
}{
	{netip.MustParsePrefix("10.0.0.0/8"), "private (RFC 1918)"},
	{netip.MustParsePrefix("172.16.0.0/12"), "private (RFC 1918)"},
	{netip.MustParsePrefix("192.168.0.0/16"), "private (RFC 1918)"},
	{netip.MustParsePrefix("100.64.0.0/10"), "shared address space (RFC 6598)"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
	{netip.MustParsePrefix("::1/128"), "loopback"},
	{netip.MustParsePrefix("fc00::/7"), "unique local (RFC 4193)"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "local-use NAT64 (RFC 8215)"},
}

// neverLearned are answers no app may learn: they are not unicast
// destinations, or a host dial to them would reach something else.
var neverLearned = []struct {
	prefix netip.Prefix
	why    string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "unspecified"},
	{netip.MustParsePrefix("::/128"), "unspecified"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("ff00::/8"), "multicast"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved or broadcast"},
	{netip.MustParsePrefix("::ffff:0:0/96"), "IPv4-mapped"},
}

// ipv4Compatible is the deprecated IPv4-compatible form (RFC 4291), which
// holds :: and ::1 too.
var ipv4Compatible = netip.MustParsePrefix("::/96")

// nat64 is the well-known NAT64 prefix (RFC 6052); an answer in it is
// judged by the IPv4 address it embeds.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// refusal says why addr may not be learned by an app with allowPrivate,
// or "" if it may. own are the connector's own addresses (tunnel and
// host), never learned.
func refusal(addr netip.Addr, allowPrivate []netip.Prefix, own map[netip.Addr]bool) string {
	if own[addr] {
		return "the connector's own address"
	}
	for _, r := range neverLearned {
		if r.prefix.Contains(addr) {
			return r.why
		}
	}
	if ipv4Compatible.Contains(addr) && addr != netip.IPv6Loopback() {
		return "IPv4-compatible"
	}
	for _, p := range allowPrivate {
		if p.Contains(addr) {
			return ""
		}
	}
	check := addr
	if nat64.Contains(addr) {
		b := addr.As16()
		check = netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
		if why := refusal(check, nil, own); why != "" {
			return "NAT64 of " + why
		}
		return ""
	}
	for _, r := range unsafeRanges {
		if r.prefix.Contains(check) {
			return r.why
		}
	}
	return ""
}
