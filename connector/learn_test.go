package connector

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/miekg/dns"
)

func rrs(t *testing.T, records ...string) []dns.RR {
	t.Helper()
	var out []dns.RR
	for _, s := range records {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, rr)
	}
	return out
}

func TestChainAddrs(t *testing.T) {
	for _, tc := range []struct {
		name    string
		qname   string
		answer  []string
		want    []string
		wantErr error
	}{
		{name: "direct", qname: "app.example.com.", answer: []string{
			"app.example.com. 60 IN A 192.0.2.1", "app.example.com. 60 IN AAAA 2001:db8::1"},
			want: []string{"192.0.2.1", "2001:db8::1"}},
		{name: "cname chain", qname: "App.Acme.com.", answer: []string{
			"app.acme.com. 60 IN CNAME acme.backend.com.",
			"acme.backend.com. 60 IN CNAME edge.cdn.net.",
			"edge.cdn.net. 60 IN A 198.51.100.7"},
			want: []string{"198.51.100.7"}},
		{name: "records off the chain are ignored", qname: "app.example.com.", answer: []string{
			"app.example.com. 60 IN CNAME target.example.net.",
			"target.example.net. 60 IN A 192.0.2.2",
			"evil.example.org. 60 IN A 203.0.113.66",
			"app.example.com.evil. 60 IN A 203.0.113.67"},
			want: []string{"192.0.2.2"}},
		{name: "no trailing dot", qname: "app.example.com", answer: []string{"app.example.com. 60 IN A 192.0.2.1"},
			want: []string{"192.0.2.1"}},
		{name: "loop", qname: "a.example.com.", answer: []string{
			"a.example.com. 60 IN CNAME b.example.com.",
			"b.example.com. 60 IN CNAME a.example.com.",
			"c.example.com. 60 IN A 192.0.2.3"}, wantErr: errChainLoop},
		{name: "two targets", qname: "a.example.com.", answer: []string{
			"a.example.com. 60 IN CNAME b.example.com.",
			"a.example.com. 60 IN CNAME c.example.com.",
			"b.example.com. 60 IN A 192.0.2.3"}, wantErr: errChainAmbiguous},
		{name: "cname beside addresses", qname: "a.example.com.", answer: []string{
			"a.example.com. 60 IN CNAME b.example.com.",
			"a.example.com. 60 IN A 192.0.2.9",
			"b.example.com. 60 IN A 192.0.2.3"}, wantErr: errChainAmbiguous},
		{name: "empty", qname: "a.example.com.", answer: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := chainAddrs(tc.qname, rrs(t, tc.answer...))
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			var want []netip.Addr
			for _, w := range tc.want {
				want = append(want, netip.MustParseAddr(w))
			}
			if !slices.Equal(got, want) {
				t.Errorf("addrs = %v, want %v", got, want)
			}
		})
	}
}

func TestChainLength(t *testing.T) {
	chain := func(n int) []dns.RR {
		var out []string
		for i := range n {
			out = append(out, dnsName(i)+" 60 IN CNAME "+dnsName(i+1))
		}
		out = append(out, dnsName(n)+" 60 IN A 192.0.2.10")
		return rrs(t, out...)
	}
	if got, err := chainAddrs(dnsName(0), chain(maxChain)); err != nil || len(got) != 1 {
		t.Errorf("chain of %d: %v, %v; want one address", maxChain, got, err)
	}
	if _, err := chainAddrs(dnsName(0), chain(maxChain+1)); !errors.Is(err, errChainTooLong) {
		t.Errorf("chain of %d: err %v, want too long", maxChain+1, err)
	}
}

func dnsName(i int) string { return "n" + string(rune('a'+i)) + ".example.com." }

func TestRefusal(t *testing.T) {
	own := map[netip.Addr]bool{netip.MustParseAddr("10.99.0.1"): true, netip.MustParseAddr("203.0.113.5"): true}
	allow := []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16"), netip.MustParsePrefix("127.0.0.1/32")}
	for addr, wantRefused := range map[string]bool{
		"192.0.2.1": false, "2001:db8::1": false, "8.8.8.8": false,
		"10.0.0.1": true, "172.16.5.5": true, "192.168.1.1": true, "100.64.0.1": true,
		"127.0.0.2": true, "169.254.169.254": true, "::1": true, "fd00::1": true, "fe80::1": true,
		"0.0.0.0": true, "::": true, "224.0.0.251": true, "ff02::1": true, "255.255.255.255": true,
		"::7f00:1": true, "::808:808": true,
		"::ffff:10.0.0.1": true, "::ffff:8.8.8.8": true, "64:ff9b::a00:1": true, "64:ff9b::808:808": false,
		"203.0.113.5": true,                      // the host's own address
		"10.20.3.4":   false, "127.0.0.1": false, // allowed by the app
		"10.99.0.1": true, // the connector's tunnel address, even inside allowPrivate
	} {
		a := netip.MustParseAddr(addr)
		ap := allow
		if addr == "10.99.0.1" {
			ap = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
		}
		if why := refusal(a, ap, own); (why != "") != wantRefused {
			t.Errorf("refusal(%s) = %q, want refused=%v", addr, why, wantRefused)
		}
	}
}

func FuzzChainAddrs(f *testing.F) {
	m := new(dns.Msg)
	m.SetQuestion("app.example.com.", dns.TypeA)
	m.Answer = append(m.Answer, &dns.CNAME{Hdr: dns.RR_Header{Name: "app.example.com.", Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 60}, Target: "x.example.net."},
		&dns.A{Hdr: dns.RR_Header{Name: "x.example.net.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: []byte{192, 0, 2, 1}})
	b, _ := m.Pack()
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		var msg dns.Msg
		if msg.Unpack(data) != nil || len(msg.Question) == 0 {
			return
		}
		addrs, err := chainAddrs(msg.Question[0].Name, msg.Answer)
		if err != nil && len(addrs) != 0 {
			t.Fatal("addresses returned with an error")
		}
		for _, a := range addrs {
			if !a.IsValid() {
				t.Fatal("invalid address")
			}
		}
	})
}

func TestChainNames(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer []string
		want   []string
	}{
		{"no cname", []string{"a.example. 60 IN A 192.0.2.1"}, []string{"a.example"}},
		{"two hops", []string{"a.example. 60 IN CNAME b.example.", "b.example. 60 IN CNAME C.Example.", "c.example. 60 IN A 192.0.2.1"},
			[]string{"a.example", "b.example", "c.example"}},
		{"off the chain", []string{"x.example. 60 IN CNAME y.example.", "a.example. 60 IN A 192.0.2.1"}, []string{"a.example"}},
		{"ambiguous: both targets", []string{"a.example. 60 IN CNAME b.example.", "a.example. 60 IN CNAME c.example."},
			[]string{"a.example", "b.example", "c.example"}},
		{"loop", []string{"a.example. 60 IN CNAME b.example.", "b.example. 60 IN CNAME a.example."}, []string{"a.example", "b.example"}},
	} {
		if got := chainNames("a.example.", rrs(t, tc.answer...)); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	// A long chain is cut after maxChain hops.
	var long []string
	for i := range 3 * maxChain {
		long = append(long, dnsName(i)+" 60 IN CNAME "+dnsName(i+1))
	}
	if got := chainNames(dnsName(0), rrs(t, long...)); len(got) != maxChain+1 {
		t.Errorf("long chain: %d names, want %d", len(got), maxChain+1)
	}
}
