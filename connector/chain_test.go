package connector_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/miekg/dns"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/apptype"
	"github.com/appconnector/appconnector/connector/dnstest"
	"github.com/appconnector/appconnector/connector/wireguard"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// A CNAME from an open app's name into a restricted app's (issue 11,
// finding 3): asking for door.example must not learn vault.example's
// address for the open app; the answer is REFUSED, as the question for
// vault.example is. Through a manual app's name, the address is learned
// for that app and waits for approval.
func TestCNAMEIntoAnotherApp(t *testing.T) {
	netstacktest.CheckLeaks(t)
	other, err := wireguard.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	up := dnstest.New(t,
		"door.example. 60 IN CNAME vault.example.",
		"vault.example. 60 IN A 127.0.0.5",
		"side.example. 60 IN CNAME x.cdn.example.",
		"x.cdn.example. 60 IN CNAME m.example.",
		"m.example. 60 IN A 127.0.0.6",
	)
	e := newEnvWith(t, connector.Config{DNSUpstreams: []string{up.Addr}}, `[
		{"name": "door", "connectors": ["*"], "domains": ["door.example", "side.example"], "allowPrivate": ["127.0.0.0/8"]},
		{"name": "vault", "connectors": ["*"], "domains": ["vault.example"], "peers": ["`+other.PublicKey().String()+`"], "allowPrivate": ["127.0.0.5/32"]},
		{"name": "m", "connectors": ["*"], "domains": ["m.example"], "approval": "manual", "allowPrivate": ["127.0.0.6/32"]}]`)
	vault := netstacktest.TCPEcho(t, "127.0.0.5:0")
	manual := netstacktest.TCPEcho(t, "127.0.0.6:0")

	if r := query(t, e, "vault.example.", dns.TypeA, false); r.Rcode != dns.RcodeRefused {
		t.Fatalf("vault.example asked directly: %s, want REFUSED", dns.RcodeToString[r.Rcode])
	}
	if r := query(t, e, "door.example.", dns.TypeA, false); r.Rcode != dns.RcodeRefused || len(r.Answer) != 0 {
		t.Fatalf("door.example (CNAME vault.example): %s with %d records, want REFUSED and nothing", dns.RcodeToString[r.Rcode], len(r.Answer))
	}
	if err := dialOK(t, e, vault); err == nil {
		t.Fatal("vault's address forwarded after the question for door.example")
	}
	for _, r := range e.conn.Routes() {
		if r.Prefix.Addr() == netip.MustParseAddr("127.0.0.5") {
			t.Fatalf("vault's address learned: %+v", r)
		}
	}
	if n := e.conn.Stats().Routes.ChainRefused; n != 1 {
		t.Errorf("chain refusals counted: %d, want 1", n)
	}

	// side.example -> x.cdn.example (no app) -> m.example (manual app).
	if r := query(t, e, "side.example.", dns.TypeA, false); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 3 {
		t.Fatalf("side.example: %v", r)
	}
	rs := e.conn.Routes()
	if len(rs) != 1 || rs[0].App != "m" || rs[0].Domain != "m.example" || rs[0].State != apptype.StatePending {
		t.Fatalf("routes after side.example: %+v; want 127.0.0.6 pending for app m", rs)
	}
	if err := dialOK(t, e, manual); err == nil {
		t.Fatal("a manual app's address forwarded before approval")
	}
	if n := e.conn.Approve(netip.MustParsePrefix("127.0.0.6/32")); n != 1 {
		t.Fatalf("approved %d routes", n)
	}
	if err := dialOK(t, e, manual); err != nil {
		t.Fatalf("after approval: %v", err)
	}
}

// A peer's answers may add new learned addresses only so fast (issue 11,
// finding 4): beyond the burst an answer that would teach new ones is
// SERVFAIL, while one for an address already learned is answered.
func TestLearnRate(t *testing.T) {
	netstacktest.CheckLeaks(t)
	var records []string
	for i := range 8 {
		records = append(records, fmt.Sprintf("h%d.w.example. 60 IN A 203.0.113.%d", i, i+1))
	}
	up := dnstest.New(t, records...)
	e := newEnvWith(t, connector.Config{DNSUpstreams: []string{up.Addr}, LearnRate: 0.001, LearnBurst: 5},
		`[{"name": "w", "connectors": ["*"], "domains": ["*.w.example"]}]`)
	for i := range 8 {
		r := query(t, e, fmt.Sprintf("h%d.w.example.", i), dns.TypeA, false)
		if want := i < 5; (r.Rcode == dns.RcodeSuccess) != want {
			t.Fatalf("question %d: %s; want an answer only for the first 5", i, dns.RcodeToString[r.Rcode])
		}
	}
	if r := query(t, e, "h0.w.example.", dns.TypeA, false); r.Rcode != dns.RcodeSuccess {
		t.Errorf("a learned address asked again: %s", dns.RcodeToString[r.Rcode])
	}
	if n := len(e.conn.Routes()); n != 5 {
		t.Errorf("%d routes learned, want 5", n)
	}
	if n := e.conn.Stats().DNS.Limited; n != 3 {
		t.Errorf("%d answers refused at the learning rate, want 3", n)
	}
}
