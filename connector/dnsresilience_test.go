package connector_test

import (
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/dnstest"
	"github.com/appconnector/appconnector/connector/dnszone"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// When every upstream fails, a name answered before gets its last answer
// (TTL 30 s, Extended DNS Error 3) and its routes back, even after they
// expired; a name never answered gets SERVFAIL saying why. /healthz turns
// 503 once no upstream has answered for the health window, and back when
// one answers; /metrics counts each upstream.
func TestDNSServeStaleAndHealth(t *testing.T) {
	netstacktest.CheckLeaks(t)
	clk := newTestClock()
	up := dnstest.New(t, "app.example.com. 300 IN A 127.0.0.1")
	e := newEnvWith(t, connector.Config{
		DNSUpstreams: []string{up.Addr}, Now: clk.now, DNSTimeout: time.Second,
		RouteTTLMin: time.Second, RouteTTLMax: time.Hour, RouteGrace: -1,
		DNSHealthWindow: 600 * time.Millisecond,
	}, `[{"name": "web", "connectors": ["*"], "domains": ["*.example.com"], "allowPrivate": ["127.0.0.1/32"]}]`)
	echo := netstacktest.TCPEcho(t, "127.0.0.1:0")

	if r := query(t, e, "app.example.com.", dns.TypeA, false); r.Rcode != dns.RcodeSuccess || r.Answer[0].Header().Ttl != 300 || edeOf(r) != nil {
		t.Fatalf("fresh answer: %v", r)
	}
	if code, body := scrape(t, e, "/healthz"); code != 200 {
		t.Fatalf("/healthz with a working upstream: %d %s", code, body)
	}
	// The route expires; then the upstream goes away.
	clk.advance(301 * time.Second)
	netstacktest.WaitFor(t, func() bool { return len(e.conn.Routes()) == 0 })
	up.Close()

	r := query(t, e, "APP.example.com.", dns.TypeA, false)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].Header().Ttl != 30 {
		t.Fatalf("stale answer: %v", r)
	}
	if ede := edeOf(r); ede == nil || ede.InfoCode != dns.ExtendedErrorCodeStaleAnswer {
		t.Errorf("stale answer's extended error: %v, want Stale Answer", ede)
	}
	if err := dialOK(t, e, echo); err != nil {
		t.Errorf("the stale answer's route: %v", err)
	}
	// Never answered: SERVFAIL, and why.
	r = query(t, e, "new.example.com.", dns.TypeA, false)
	if ede := edeOf(r); r.Rcode != dns.RcodeServerFailure || ede == nil || ede.InfoCode != dns.ExtendedErrorCodeNetworkError {
		t.Errorf("a new name with the upstream down: %v", r)
	}
	// Another type of the same name was never answered either.
	if r := query(t, e, "app.example.com.", dns.TypeAAAA, false); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("AAAA never answered, upstream down: %s", dns.RcodeToString[r.Rcode])
	}

	netstacktest.WaitFor(t, func() bool { code, _ := scrape(t, e, "/healthz"); return code == 503 })
	if _, body := scrape(t, e, "/healthz"); !strings.Contains(body, "no DNS upstream has answered for") {
		t.Errorf("/healthz body: %q", body)
	}
	_, metrics := scrape(t, e, "/metrics")
	label := `{upstream="` + up.Addr + `"}`
	if v := metricValue(t, metrics, "appconnector_dns_upstream_queries_total"+label); v < 4 {
		t.Errorf("upstream queries = %v, want at least 4", v)
	}
	if v := metricValue(t, metrics, "appconnector_dns_upstream_failures_total"+label); v < 3 {
		t.Errorf("upstream failures = %v, want at least 3", v)
	}
	if v := metricValue(t, metrics, "appconnector_dns_upstream_latency_seconds_count"+label); v != 1 {
		t.Errorf("upstream answers timed = %v, want 1", v)
	}
	if v := metricValue(t, metrics, `appconnector_dns_queries_total{result="stale"}`); v != 1 {
		t.Errorf("stale answers = %v, want 1", v)
	}
	if v := metricValue(t, metrics, "appconnector_dns_healthy"); v != 0 {
		t.Errorf("dns_healthy = %v, want 0", v)
	}

	// An upstream at the same address again: the idle connector's probe
	// finds it, with no peer asking.
	back, err := dnszone.StartAt(up.Addr, "app.example.com. 300 IN A 127.0.0.1")
	if err != nil {
		t.Skipf("the upstream's port was taken meanwhile: %v", err)
	}
	defer back.Close()
	netstacktest.WaitFor(t, func() bool { code, _ := scrape(t, e, "/healthz"); return code == 200 })
	if r := query(t, e, "app.example.com.", dns.TypeA, false); r.Answer[0].Header().Ttl != 300 || edeOf(r) != nil {
		t.Errorf("fresh again: %v", r)
	}
}

// The connector's own decisions carry an Extended DNS Error saying why.
func TestDNSExtendedErrors(t *testing.T) {
	netstacktest.CheckLeaks(t)
	e, _ := dnsEnv(t)
	for _, tc := range []struct {
		name  string
		rcode int
		code  uint16
	}{
		{"other.org.", dns.RcodeRefused, dns.ExtendedErrorCodeBlocked},
		{"eng.example.org.", dns.RcodeRefused, dns.ExtendedErrorCodeProhibited},
		{"broken.example.com.", dns.RcodeServerFailure, dns.ExtendedErrorCodeNoReachableAuthority},
		{"internal.example.com.", dns.RcodeSuccess, dns.ExtendedErrorCodeFiltered},
		{"loop.example.com.", dns.RcodeSuccess, dns.ExtendedErrorCodeFiltered},
	} {
		r := query(t, e, tc.name, dns.TypeA, false)
		ede := edeOf(r)
		if r.Rcode != tc.rcode || ede == nil || ede.InfoCode != tc.code || ede.ExtraText == "" {
			t.Errorf("%s: %s %v, want %s with extended error %d and a reason", tc.name, dns.RcodeToString[r.Rcode], ede, dns.RcodeToString[tc.rcode], tc.code)
		}
	}
	// Learned as asked: no extended error.
	if r := query(t, e, "app.example.com.", dns.TypeA, false); edeOf(r) != nil {
		t.Errorf("a learned answer carries %v", edeOf(r))
	}
}
