package connector

import (
	"errors"
	"fmt"
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
			got, err := chainAddrs(tc.qname, dns.TypeA, rrs(t, tc.answer...))
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			var want []netip.Addr
			for _, w := range tc.want {
				want = append(want, netip.MustParseAddr(w))
			}
			if !slices.Equal(onlyAddrs(got), want) {
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
	if got, err := chainAddrs(dnsName(0), dns.TypeA, chain(maxChain)); err != nil || len(got) != 1 {
		t.Errorf("chain of %d: %v, %v; want one address", maxChain, got, err)
	}
	if _, err := chainAddrs(dnsName(0), dns.TypeA, chain(maxChain+1)); !errors.Is(err, errChainTooLong) {
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
		addrs, err := chainAddrs(msg.Question[0].Name, msg.Question[0].Qtype, msg.Answer)
		if err != nil && len(addrs) != 0 {
			t.Fatal("addresses returned with an error")
		}
		for _, a := range addrs {
			if !a.addr.IsValid() {
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
		if got := chainNames("a.example.", dns.TypeA, rrs(t, tc.answer...)); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
	// A long chain is cut after maxChain hops.
	var long []string
	for i := range 3 * maxChain {
		long = append(long, dnsName(i)+" 60 IN CNAME "+dnsName(i+1))
	}
	if got := chainNames(dnsName(0), dns.TypeA, rrs(t, long...)); len(got) != maxChain+1 {
		t.Errorf("long chain: %d names, want %d", len(got), maxChain+1)
	}
}

func onlyAddrs(as []answerAddr) []netip.Addr {
	var out []netip.Addr
	for _, a := range as {
		out = append(out, a.addr)
	}
	return out
}

func TestServiceBindingAddrs(t *testing.T) {
	for _, tc := range []struct {
		name    string
		qtype   uint16
		answer  []string
		want    []string
		wantErr error
	}{
		{name: "hints of the name", qtype: dns.TypeHTTPS, answer: []string{
			`a.example.com. 300 IN HTTPS 1 . alpn=h2,h3 ipv4hint=192.0.2.1,192.0.2.2 ipv6hint=2001:db8::1`},
			want: []string{"192.0.2.1", "192.0.2.2", "2001:db8::1"}},
		{name: "through a cname", qtype: dns.TypeHTTPS, answer: []string{
			`a.example.com. 60 IN CNAME cdn.example.net.`,
			`cdn.example.net. 60 IN HTTPS 1 . ipv4hint=192.0.2.3`},
			want: []string{"192.0.2.3"}},
		{name: "alias mode target", qtype: dns.TypeHTTPS, answer: []string{
			`a.example.com. 60 IN HTTPS 0 svc.example.net.`,
			`svc.example.net. 60 IN HTTPS 1 . ipv4hint=192.0.2.4`,
			`svc.example.net. 60 IN HTTPS 2 . ipv6hint=2001:db8::4`},
			want: []string{"192.0.2.4", "2001:db8::4"}},
		{name: "alias then cname", qtype: dns.TypeHTTPS, answer: []string{
			`a.example.com. 60 IN HTTPS 0 svc.example.net.`,
			`svc.example.net. 60 IN CNAME edge.example.org.`,
			`edge.example.org. 60 IN HTTPS 1 . ipv4hint=192.0.2.5`},
			want: []string{"192.0.2.5"}},
		{name: "off the chain", qtype: dns.TypeHTTPS, answer: []string{
			`a.example.com. 60 IN HTTPS 1 . ipv4hint=192.0.2.1`,
			`evil.example.org. 60 IN HTTPS 1 . ipv4hint=192.0.2.66`},
			want: []string{"192.0.2.1"}},
		{name: "svcb answers svcb only", qtype: dns.TypeHTTPS, answer: []string{
			`a.example.com. 60 IN SVCB 1 . ipv4hint=192.0.2.66`},
			want: nil},
		{name: "svcb", qtype: dns.TypeSVCB, answer: []string{
			`a.example.com. 60 IN SVCB 1 . ipv4hint=192.0.2.7`},
			want: []string{"192.0.2.7"}},
		{name: "alias mode hints ignored", qtype: dns.TypeHTTPS, answer: []string{
			`a.example.com. 60 IN HTTPS 0 .`},
			want: nil},
		{name: "alias loop", qtype: dns.TypeHTTPS, answer: []string{
			`a.example.com. 60 IN HTTPS 0 b.example.com.`,
			`b.example.com. 60 IN HTTPS 0 a.example.com.`,
			`a.example.com. 60 IN HTTPS 1 . ipv4hint=192.0.2.1`}, wantErr: errChainLoop},
		{name: "cname beside a binding", qtype: dns.TypeHTTPS, answer: []string{
			`a.example.com. 60 IN CNAME b.example.com.`,
			`a.example.com. 60 IN HTTPS 1 . ipv4hint=192.0.2.9`}, wantErr: errChainAmbiguous},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := chainAddrs("a.example.com.", tc.qtype, rrs(t, tc.answer...))
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			var want []netip.Addr
			for _, w := range tc.want {
				want = append(want, netip.MustParseAddr(w))
			}
			if !slices.Equal(onlyAddrs(got), want) {
				t.Errorf("addrs = %v, want %v", got, want)
			}
		})
	}
	got, _ := chainAddrs("a.example.com.", dns.TypeHTTPS, rrs(t, `a.example.com. 300 IN HTTPS 1 . ipv4hint=192.0.2.1`))
	if len(got) != 1 || got[0].ttl != 300 {
		t.Errorf("hint's TTL: %v, want the record's 300", got)
	}
	// An alias chain is bounded like a CNAME chain.
	var long []string
	for i := range maxChain + 1 {
		long = append(long, fmt.Sprintf("%s 60 IN HTTPS 0 %s", dnsName(i), dnsName(i+1)))
	}
	long = append(long, dnsName(maxChain+1)+" 60 IN HTTPS 1 . ipv4hint=192.0.2.1")
	if _, err := chainAddrs(dnsName(0), dns.TypeHTTPS, rrs(t, long...)); !errors.Is(err, errChainTooLong) {
		t.Errorf("alias chain of %d: err = %v, want %v", maxChain+1, err, errChainTooLong)
	}
}

func TestServiceBindingNames(t *testing.T) {
	got := chainNames("a.example.com.", dns.TypeHTTPS, rrs(t,
		`a.example.com. 60 IN HTTPS 0 svc.example.net.`,
		`svc.example.net. 60 IN HTTPS 1 pool.example.org. ipv4hint=192.0.2.1`))
	want := []string{"a.example.com", "svc.example.net", "pool.example.org"}
	if !slices.Equal(got, want) {
		t.Errorf("chainNames = %v, want %v", got, want)
	}
}

func TestStripHints(t *testing.T) {
	answer := rrs(t,
		`a.example.com. 60 IN HTTPS 1 . alpn=h2 ipv4hint=192.0.2.1,10.0.0.1 ech=AEn+DQBFKwAgACABWIHUGj4u+PIggYXcR5JF0gYk3dCRioBW8uJq9H4mKAAIAAEAAQABAANAEnB1YmxpYy50bHMtZWNoLmRldgAA ipv6hint=fd00::1`,
		`a.example.com. 60 IN HTTPS 2 . ipv4hint=10.0.0.2`)
	stripHints(answer, func(a netip.Addr) bool { return !a.IsPrivate() })
	want := rrs(t,
		`a.example.com. 60 IN HTTPS 1 . alpn=h2 ipv4hint=192.0.2.1 ech=AEn+DQBFKwAgACABWIHUGj4u+PIggYXcR5JF0gYk3dCRioBW8uJq9H4mKAAIAAEAAQABAANAEnB1YmxpYy50bHMtZWNoLmRldgAA`,
		`a.example.com. 60 IN HTTPS 2 .`)
	for i := range want {
		if answer[i].String() != want[i].String() {
			t.Errorf("record %d:\n got %s\nwant %s", i, answer[i], want[i])
		}
	}
}
