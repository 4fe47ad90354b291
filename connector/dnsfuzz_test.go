package connector_test

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/appconnector/appconnector/connector"
)

// scriptedUpstream is a UDP DNS "server" on 127.0.0.1 that answers every
// question with the bytes it was last given (with the question's ID), or
// not at all if they are empty.
type scriptedUpstream struct {
	pc     net.PacketConn
	mu     sync.Mutex
	answer []byte
	wg     sync.WaitGroup
}

func startScriptedUpstream(tb testing.TB) *scriptedUpstream {
	tb.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s := &scriptedUpstream{pc: pc}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			a := append([]byte(nil), s.answer...)
			s.mu.Unlock()
			if len(a) >= 2 && n >= 2 {
				copy(a, buf[:2])
			}
			if len(a) > 0 {
				pc.WriteTo(a, from)
			}
		}
	}()
	tb.Cleanup(func() { pc.Close(); s.wg.Wait() })
	return s
}

func (s *scriptedUpstream) set(answer []byte) {
	s.mu.Lock()
	s.answer = answer
	s.mu.Unlock()
}

// FuzzDNSInterceptor sends arbitrary bytes as a question to the
// connector's DNS port through the tunnel, while its upstream answers
// anything with arbitrary bytes. The connector must keep answering
// (a well-formed question for a name of no app gets REFUSED right after),
// and must never learn a route to an address the policy does not allow
// (loopback, private, link-local, multicast, unspecified).
//
//	go test ./connector -run X -fuzz FuzzDNSInterceptor -fuzztime 60s -fuzzminimizetime 10s
func FuzzDNSInterceptor(f *testing.F) {
	up := startScriptedUpstream(f)
	e := newEnvWith(f, connector.Config{DNSUpstreams: []string{up.pc.LocalAddr().String()}, DNSTimeout: 300 * time.Millisecond},
		`[{"name": "web", "connectors": ["*"], "domains": ["*.example.com"]}]`)
	dnsAddr := net.JoinHostPort(connV4.Addr().String(), "53")

	pack := func(m *dns.Msg) []byte {
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	q := new(dns.Msg).SetQuestion("a.example.com.", dns.TypeA)
	rr := func(s string) dns.RR {
		r, err := dns.NewRR(s)
		if err != nil {
			f.Fatal(err)
		}
		return r
	}
	good := new(dns.Msg).SetReply(q)
	good.Answer = []dns.RR{rr("a.example.com. 60 IN CNAME b.example.net."), rr("b.example.net. 60 IN A 192.0.2.1")}
	unsafe := new(dns.Msg).SetReply(q)
	unsafe.Answer = []dns.RR{rr("a.example.com. 60 IN A 127.0.0.1"), rr("a.example.com. 60 IN A 10.1.2.3")}
	q6 := new(dns.Msg).SetQuestion("v6.example.com.", dns.TypeAAAA)
	good6 := new(dns.Msg).SetReply(q6)
	good6.Answer = []dns.RR{rr("v6.example.com. 60 IN AAAA 2001:db8::1"), rr("v6.example.com. 60 IN AAAA fe80::1")}
	f.Add(pack(q), pack(good))
	f.Add(pack(q), pack(unsafe))
	f.Add(pack(q6), pack(good6))
	f.Add(pack(q), []byte("junk"))
	f.Add([]byte("junk"), pack(good))
	f.Add(pack(q), []byte(nil))

	f.Fuzz(func(t *testing.T, question, answer []byte) {
		up.set(answer)
		c, err := e.client.DialContext(ctxTimeout(t, 5*time.Second), "udp", dnsAddr)
		if err != nil {
			t.Fatal(err)
		}
		// Whatever comes back for it, if anything, is not judged (and
		// goes to a closed socket: the probe below uses another one).
		c.Write(question)
		c.Close()

		// Still answering.
		c, err = e.client.DialContext(ctxTimeout(t, 5*time.Second), "udp", dnsAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		co := &dns.Conn{Conn: c}
		probe := new(dns.Msg).SetQuestion("not-an-app.test.", dns.TypeA)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if err := co.WriteMsg(probe); err != nil {
			t.Fatal(err)
		}
		// A late reply to an earlier input may reach this socket if it
		// got that socket's port again: skip replies to other questions.
		for {
			r, err := co.ReadMsg()
			if err != nil {
				t.Fatalf("after the input, no answer to a question for a name of no app: %v", err)
			}
			if r.Id != probe.Id || len(r.Question) != 1 || r.Question[0].Name != probe.Question[0].Name {
				continue
			}
			if r.Rcode != dns.RcodeRefused {
				t.Fatalf("after the input, a question for a name of no app got %s, want REFUSED", dns.RcodeToString[r.Rcode])
			}
			break
		}

		for _, rt := range e.conn.Routes() {
			a := rt.Prefix.Addr()
			if a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || a.IsMulticast() || a.IsUnspecified() {
				t.Fatalf("learned a route to %v (%+v)", rt.Prefix, rt)
			}
		}
	})
}

// FuzzServiceBindingAnswer asks for the HTTPS (or SVCB) record of an app
// name while the upstream answers with arbitrary bytes. The connector must
// answer (any rcode), learn no unsafe address, and tell the client no hint
// that is not a route it may use.
//
//	go test ./connector -run X -fuzz FuzzServiceBindingAnswer -fuzztime 60s -fuzzminimizetime 10s
func FuzzServiceBindingAnswer(f *testing.F) {
	up := startScriptedUpstream(f)
	e := newEnvWith(f, connector.Config{DNSUpstreams: []string{up.pc.LocalAddr().String()}, DNSTimeout: 300 * time.Millisecond},
		`[{"name": "web", "connectors": ["*"], "domains": ["*.example.com"]}]`)
	dnsAddr := net.JoinHostPort(connV4.Addr().String(), "53")
	seed := func(qtype uint16, records ...string) {
		q := new(dns.Msg).SetQuestion("svc.example.com.", qtype)
		m := new(dns.Msg).SetReply(q)
		for _, s := range records {
			rr, err := dns.NewRR(s)
			if err != nil {
				f.Fatal(err)
			}
			m.Answer = append(m.Answer, rr)
		}
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(qtype == dns.TypeSVCB, b)
	}
	seed(dns.TypeHTTPS, "svc.example.com. 60 IN HTTPS 1 . alpn=h2 ipv4hint=192.0.2.1,10.0.0.1 ipv6hint=2001:db8::1,fe80::1")
	seed(dns.TypeHTTPS, "svc.example.com. 60 IN CNAME x.example.net.", "x.example.net. 60 IN HTTPS 0 y.example.net.",
		"y.example.net. 60 IN HTTPS 1 . ipv4hint=192.0.2.2,127.0.0.1")
	seed(dns.TypeHTTPS, "svc.example.com. 60 IN HTTPS 0 svc.example.com.", "svc.example.com. 60 IN HTTPS 1 . ipv4hint=10.1.1.1")
	seed(dns.TypeSVCB, "svc.example.com. 60 IN SVCB 1 . port=853 ipv4hint=192.0.2.3,169.254.169.254")
	seed(dns.TypeHTTPS, "evil.example.org. 60 IN HTTPS 1 . ipv4hint=10.2.2.2")

	f.Fuzz(func(t *testing.T, svcb bool, answer []byte) {
		up.set(answer)
		qtype := dns.TypeHTTPS
		if svcb {
			qtype = dns.TypeSVCB
		}
		c, err := e.client.DialContext(ctxTimeout(t, 5*time.Second), "udp", dnsAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		co := &dns.Conn{Conn: c, UDPSize: 1232}
		q := new(dns.Msg).SetQuestion("svc.example.com.", qtype)
		q.SetEdns0(1232, false)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if err := co.WriteMsg(q); err != nil {
			t.Fatal(err)
		}
		var r *dns.Msg
		for r == nil || r.Id != q.Id {
			if r, err = co.ReadMsg(); err != nil {
				t.Fatalf("no answer: %v", err)
			}
		}
		routes := map[netip.Addr]bool{}
		for _, rt := range e.conn.Routes() {
			a := rt.Prefix.Addr()
			if a.IsLoopback() || a.IsPrivate() || a.IsLinkLocalUnicast() || a.IsMulticast() || a.IsUnspecified() {
				t.Fatalf("learned a route to %v (%+v)", rt.Prefix, rt)
			}
			routes[a] = true
		}
		for _, rr := range append(r.Answer, r.Extra...) {
			var s *dns.SVCB
			switch rr := rr.(type) {
			case *dns.SVCB:
				s = rr
			case *dns.HTTPS:
				s = &rr.SVCB
			default:
				continue
			}
			for _, kv := range s.Value {
				var hints []net.IP
				switch kv := kv.(type) {
				case *dns.SVCBIPv4Hint:
					hints = kv.Hint
				case *dns.SVCBIPv6Hint:
					hints = kv.Hint
				}
				for _, ip := range hints {
					if a, ok := netip.AddrFromSlice(ip); !ok || !routes[a.Unmap()] && !routes[a] {
						t.Fatalf("the answer hints %v, not a route: %v", ip, rr)
					}
				}
			}
		}
	})
}
