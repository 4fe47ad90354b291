package connector

import (
	"errors"
	"net"
	"net/netip"
	"slices"

	"github.com/miekg/dns"

	"github.com/appconnector/appconnector/connector/apptype"
)

// maxChain is the longest CNAME chain followed from a question name.
const maxChain = 10

// Reasons an answer yields no routes at all.
var (
	errChainLoop      = errors.New("cname chain loops")
	errChainTooLong   = errors.New("cname chain longer than 10")
	errChainAmbiguous = errors.New("cname chain is ambiguous")
)

// answerAddr is an address an answer gives for its question, with the
// TTL of the record that gave it.
type answerAddr struct {
	addr netip.Addr
	ttl  uint32
}

// learnsFrom reports whether answers to questions of type qtype teach
// routes: addresses (A, AAAA) and service bindings (HTTPS, SVCB), whose
// ipv4hint and ipv6hint addresses clients connect to.
func learnsFrom(qtype uint16) bool {
	switch qtype {
	case dns.TypeA, dns.TypeAAAA, dns.TypeHTTPS, dns.TypeSVCB:
		return true
	}
	return false
}

// serviceOf returns rr as a service binding if it is one of type qtype
// (an HTTPS record answers only HTTPS questions, an SVCB record only SVCB
// questions), nil otherwise.
func serviceOf(rr dns.RR, qtype uint16) *dns.SVCB {
	if rr.Header().Rrtype != qtype {
		return nil
	}
	return anyService(rr)
}

// anyService returns rr as a service binding if it is an HTTPS or SVCB
// record, nil otherwise.
func anyService(rr dns.RR) *dns.SVCB {
	switch rr := rr.(type) {
	case *dns.SVCB:
		return rr
	case *dns.HTTPS:
		return &rr.SVCB
	}
	return nil
}

// answerGraph is what an answer says about names: the CNAME of each, the
// AliasMode targets of service bindings, and which names own data
// (addresses or service bindings). targets holds every name a client may
// go on to from each: all its CNAME targets (even two) and the targets of
// its service bindings, ServiceMode ones included.
type answerGraph struct {
	cname     map[string]string
	alias     map[string][]string
	targets   map[string][]string
	hasData   map[string]bool
	ambiguous bool // a name with two CNAME targets
}

func newAnswerGraph(qtype uint16, answer []dns.RR) answerGraph {
	g := answerGraph{cname: map[string]string{}, alias: map[string][]string{}, targets: map[string][]string{}, hasData: map[string]bool{}}
	for _, rr := range answer {
		h := rr.Header()
		if h.Class != dns.ClassINET {
			continue
		}
		owner := apptype.CanonicalName(h.Name)
		switch rr := rr.(type) {
		case *dns.CNAME:
			target := apptype.CanonicalName(rr.Target)
			if prev, ok := g.cname[owner]; ok && prev != target {
				g.ambiguous = true
			}
			g.cname[owner] = target
			g.targets[owner] = append(g.targets[owner], target)
		case *dns.A, *dns.AAAA:
			g.hasData[owner] = true
		default:
			s := serviceOf(rr, qtype)
			if s == nil {
				continue
			}
			g.hasData[owner] = true
			// An AliasMode record sends the client on to its target;
			// "." (no service, or the owner itself) sends it nowhere.
			t := apptype.CanonicalName(s.Target)
			if t == "" {
				continue
			}
			g.targets[owner] = append(g.targets[owner], t)
			if s.Priority == 0 && !slices.Contains(g.alias[owner], t) {
				g.alias[owner] = append(g.alias[owner], t)
			}
		}
	}
	return g
}

// chainAddrs returns the addresses that answer qname, a question of type
// qtype: the A and AAAA records, and the ipv4hint and ipv6hint values of
// ServiceMode HTTPS or SVCB records, owned by qname or by a name reached
// from it through the answer's CNAME records and AliasMode targets.
// Records off that chain are ignored, whatever they claim. A loop, a chain
// longer than maxChain, or an ambiguous chain (a name with two CNAME
// targets, or with a CNAME and data of its own) is an error and yields no
// addresses.
func chainAddrs(qname string, qtype uint16, answer []dns.RR) ([]answerAddr, error) {
	g := newAnswerGraph(qtype, answer)
	if g.ambiguous {
		return nil, errChainAmbiguous
	}
	onChain := map[string]bool{}
	onPath := map[string]bool{}
	var walk func(name string, hops int) error
	walk = func(name string, hops int) error {
		if onPath[name] {
			return errChainLoop
		}
		if onChain[name] {
			return nil // reached before by another alias
		}
		if hops > maxChain {
			return errChainTooLong
		}
		onChain[name], onPath[name] = true, true
		defer delete(onPath, name)
		if next, ok := g.cname[name]; ok {
			if g.hasData[name] {
				return errChainAmbiguous
			}
			return walk(next, hops+1)
		}
		for _, t := range g.alias[name] {
			if err := walk(t, hops+1); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(apptype.CanonicalName(qname), 0); err != nil {
		return nil, err
	}
	var out []answerAddr
	add := func(ip net.IP, ttl uint32) {
		if a, ok := netip.AddrFromSlice(ip); ok {
			out = append(out, answerAddr{a, ttl})
		}
	}
	for _, rr := range answer {
		h := rr.Header()
		if h.Class != dns.ClassINET || !onChain[apptype.CanonicalName(h.Name)] {
			continue
		}
		switch rr := rr.(type) {
		case *dns.A:
			add(rr.A.To4(), h.Ttl)
		case *dns.AAAA:
			add(rr.AAAA.To16(), h.Ttl)
		default:
			s := serviceOf(rr, qtype)
			if s == nil || s.Priority == 0 {
				continue
			}
			for _, kv := range s.Value {
				switch kv := kv.(type) {
				case *dns.SVCBIPv4Hint:
					for _, ip := range kv.Hint {
						add(ip.To4(), h.Ttl)
					}
				case *dns.SVCBIPv6Hint:
					for _, ip := range kv.Hint {
						add(ip.To16(), h.Ttl)
					}
				}
			}
		}
	}
	return out, nil
}

// chainNames returns qname and the names reached from it through the
// answer's CNAME records and the targets of its service bindings of type
// qtype (AliasMode, and ServiceMode targets a client connects to), nearest
// first, at most maxChain+1 of them. An ambiguous chain (a name with two
// targets) yields every target, so that no name a client may follow is
// missed; a loop ends it.
func chainNames(qname string, qtype uint16, answer []dns.RR) []string {
	targets := newAnswerGraph(qtype, answer).targets
	names := []string{apptype.CanonicalName(qname)}
	seen := map[string]bool{names[0]: true}
	for i := 0; i < len(names) && len(names) <= maxChain; i++ {
		for _, t := range targets[names[i]] {
			if !seen[t] && len(names) <= maxChain {
				seen[t] = true
				names = append(names, t)
			}
		}
	}
	return names
}

// stripHints removes the addresses keep rejects from the ipv4hint and
// ipv6hint values of the HTTPS and SVCB records in rrs (a key left with
// no address goes), so that no client is told an address it may not
// reach. The rest of each record, ECH and ALPN among it, stays as it was.
func stripHints(rrs []dns.RR, keep func(netip.Addr) bool) {
	for _, rr := range rrs {
		s := anyService(rr)
		if s == nil {
			continue
		}
		kept := s.Value[:0]
		for _, kv := range s.Value {
			var hints *[]net.IP
			var form func(net.IP) net.IP // as chainAddrs reads the hint
			switch kv := kv.(type) {
			case *dns.SVCBIPv4Hint:
				hints, form = &kv.Hint, net.IP.To4
			case *dns.SVCBIPv6Hint:
				hints, form = &kv.Hint, net.IP.To16
			}
			if hints != nil {
				*hints = slices.DeleteFunc(*hints, func(ip net.IP) bool {
					a, ok := netip.AddrFromSlice(form(ip))
					return !ok || !keep(a)
				})
				if len(*hints) == 0 {
					continue
				}
			}
			kept = append(kept, kv)
		}
		s.Value = kept
	}
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
