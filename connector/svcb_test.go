package connector_test

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/apptype"
	"github.com/appconnector/appconnector/connector/dnstest"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// ech is an ECH config list (RFC 9460 section 7.3), passed through as is.
const ech = "AEn+DQBFKwAgACABWIHUGj4u+PIggYXcR5JF0gYk3dCRioBW8uJq9H4mKAAIAAEAAQABAANAEnB1YmxpYy50bHMtZWNoLmRldgAA"

// A browser asks for the HTTPS record of an app name and connects to its
// hints: the connector learns them before answering, removes the one it
// refuses, and leaves the rest of each record alone.
func TestDNSLearnsServiceBindingHints(t *testing.T) {
	netstacktest.CheckLeaks(t)
	up := dnstest.New(t,
		"svc.example.com. 300 IN HTTPS 1 . alpn=h2,h3 ipv4hint=127.0.0.1,10.1.2.3 ipv6hint=::1 ech="+ech,
		"cdn.example.com. 60 IN CNAME edge.example.net.",
		"edge.example.net. 60 IN HTTPS 1 pool.example.net. alpn=h2 ipv4hint=127.0.0.1",
		"plain.example.com. 60 IN SVCB 1 . port=8443 ipv6hint=::1",
		"bad.example.com. 60 IN HTTPS 1 . ipv4hint=10.9.9.9",
	)
	e := newEnvWith(t, connector.Config{DNSUpstreams: []string{up.Addr}}, `[
	  {"name": "web", "connectors": ["*"], "domains": ["*.example.com"], "allowPrivate": ["127.0.0.1/32", "::1/128"]}
	]`)
	echo4 := netstacktest.TCPEcho(t, "127.0.0.1:0")
	echo6 := netstacktest.TCPEcho(t, "[::1]:0")
	if err := dialOK(t, e, echo4); err == nil {
		t.Fatal("127.0.0.1 reachable before any DNS answer")
	}

	r := query(t, e, "svc.example.com.", dns.TypeHTTPS, false)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("HTTPS answer: %v", r)
	}
	h, ok := r.Answer[0].(*dns.HTTPS)
	if !ok {
		t.Fatalf("answer is %T, want *dns.HTTPS", r.Answer[0])
	}
	// 10.1.2.3 is private and not allowed: gone from the hint; ALPN, ECH
	// and the other hints as the upstream sent them (keys in wire order).
	want := "svc.example.com.\t300\tIN\tHTTPS\t1 . alpn=\"h2,h3\" ipv4hint=\"127.0.0.1\" ech=\"" + ech + "\" ipv6hint=\"::1\""
	if got := h.String(); got != want {
		t.Errorf("HTTPS record:\n got %s\nwant %s", got, want)
	}
	if ede := edeOf(r); ede == nil || ede.InfoCode != dns.ExtendedErrorCodeFiltered || !strings.Contains(ede.ExtraText, "10.1.2.3") {
		t.Errorf("extended error: %v, want Filtered naming 10.1.2.3", ede)
	}
	// Both hints were routes before the answer came back.
	for _, dst := range []netip.AddrPort{echo4, echo6} {
		c, err := e.client.DialContext(context.Background(), "tcp", dst.String())
		if err != nil {
			t.Fatalf("first connection to %v after the answer: %v", dst, err)
		}
		netstacktest.EchoTCP(t, c, 1024)
		c.Close()
	}
	var learned []string
	for _, rt := range e.conn.Routes() {
		if rt.Source == "learned" {
			learned = append(learned, rt.Prefix.String()+" "+rt.Domain)
		}
	}
	if !slices.Equal(learned, []string{"127.0.0.1/32 svc.example.com", "::1/128 svc.example.com"}) {
		t.Errorf("learned routes: %v", learned)
	}

	// Through a CNAME to a record whose target is another name: the hint
	// is learned for the question's name.
	if r := query(t, e, "cdn.example.com.", dns.TypeHTTPS, true); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 2 || edeOf(r) != nil {
		t.Errorf("HTTPS through a CNAME: %v", r)
	}
	if !slices.ContainsFunc(e.conn.Routes(), func(rt apptype.Route) bool { return rt.Domain == "cdn.example.com" }) {
		t.Errorf("hint behind a CNAME not learned: %+v", e.conn.Routes())
	}
	// SVCB answers the same way.
	if r := query(t, e, "plain.example.com.", dns.TypeSVCB, false); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Errorf("SVCB: %v", r)
	}
	if !slices.ContainsFunc(e.conn.Routes(), func(rt apptype.Route) bool { return rt.Domain == "plain.example.com" }) {
		t.Errorf("SVCB hint not learned: %+v", e.conn.Routes())
	}
	// A record whose only hint is refused keeps everything else.
	r = query(t, e, "bad.example.com.", dns.TypeHTTPS, false)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || strings.Contains(r.Answer[0].String(), "hint") {
		t.Errorf("HTTPS with only a refused hint: %v", r)
	}
	if slices.ContainsFunc(e.conn.Routes(), func(rt apptype.Route) bool { return rt.Prefix.Addr().Is4() && !rt.Prefix.Addr().IsLoopback() }) {
		t.Errorf("a refused hint became a route: %+v", e.conn.Routes())
	}
}

// edeOf returns the Extended DNS Error of m, nil if it has none.
func edeOf(m *dns.Msg) *dns.EDNS0_EDE {
	if opt := m.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if ede, ok := o.(*dns.EDNS0_EDE); ok {
				return ede
			}
		}
	}
	return nil
}
