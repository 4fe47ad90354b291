package connector_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/apptype"
	"github.com/appconnector/appconnector/connector/dnstest"
	"github.com/appconnector/appconnector/connector/dnszone"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// The whole loop with real parts: a real authoritative DNS server on
// 127.0.0.1 is the connector's upstream; the client peer asks the
// connector's tunnel address over WireGuard, then connects.

const dnsPolicy = `[
  {"name": "web", "connectors": ["tag:connector"], "domains": ["app.example.com", "*.example.com"],
   "allowPrivate": ["127.0.0.1/32", "::1/128"]},
  {"name": "eng", "connectors": ["*"], "domains": ["eng.example.org"], "peers": ["tag:eng"]},
  {"name": "elsewhere", "connectors": ["tag:other-connector"], "domains": ["elsewhere.example.net"]}
]`

func dnsEnv(t *testing.T) (*env, *dnszone.Server) {
	t.Helper()
	up := dnstest.New(t,
		"app.example.com. 60 IN CNAME backend.example.net.",
		"backend.example.net. 60 IN A 127.0.0.1",
		"backend.example.net. 60 IN AAAA ::1",
		"deep.x.y.example.com. 60 IN A 127.0.0.1",
		"*.wild.example.com. 60 IN CNAME backend.example.net.",
		"internal.example.com. 60 IN A 10.0.0.1",
		"loop.example.com. 60 IN CNAME loop2.example.com.",
		"loop2.example.com. 60 IN CNAME loop.example.com.",
		"other.org. 60 IN A 192.0.2.1",
		"eng.example.org. 60 IN A 127.0.0.1",
		"elsewhere.example.net. 60 IN A 127.0.0.1",
		"apex-only.example.com. 60 IN TXT \"hello\"",
	)
	up.SetRcode("broken.example.com.", dns.RcodeServerFailure)
	e := newEnvWith(t, connector.Config{DNSUpstreams: []string{up.Addr}}, dnsPolicy)
	return e, up
}

// query asks the connector's tunnel address over the tunnel (UDP, or TCP
// if tcp is set).
func query(t *testing.T, e *env, name string, qtype uint16, tcp bool) *dns.Msg {
	t.Helper()
	network := "udp"
	if tcp {
		network = "tcp"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := e.client.DialContext(ctx, network, netip.AddrPortFrom(connV4.Addr(), 53).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	co := &dns.Conn{Conn: c, UDPSize: 1232}
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(1232, false)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := co.WriteMsg(m); err != nil {
		t.Fatal(err)
	}
	r, err := co.ReadMsg()
	if err != nil {
		t.Fatalf("query %s: %v", name, err)
	}
	if r.Id != m.Id {
		t.Fatalf("reply id %d, want %d", r.Id, m.Id)
	}
	return r
}

func dialOK(t *testing.T, e *env, dst netip.AddrPort) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := e.client.DialContext(ctx, "tcp", dst.String())
	if err == nil {
		c.Close()
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial %v timed out instead of being answered", dst)
	}
	return err
}

func TestDNSLearnsRouteBeforeAnswer(t *testing.T) {
	netstacktest.CheckLeaks(t)
	e, _ := dnsEnv(t)
	echo4 := netstacktest.TCPEcho(t, "127.0.0.1:0")
	echo6 := netstacktest.TCPEcho(t, "[::1]:0")

	if err := dialOK(t, e, echo4); err == nil {
		t.Fatal("127.0.0.1 reachable before any DNS answer")
	}
	for _, tc := range []struct {
		qtype uint16
		tcp   bool
		want  netip.Addr
		echo  netip.AddrPort
	}{
		{dns.TypeA, false, netip.MustParseAddr("127.0.0.1"), echo4},
		{dns.TypeAAAA, true, netip.MustParseAddr("::1"), echo6},
	} {
		r := query(t, e, "App.Example.com.", tc.qtype, tc.tcp)
		if r.Rcode != dns.RcodeSuccess || !slices.Contains(dnszone.AnswerAddrs(r), tc.want) {
			t.Fatalf("%s answer: %v", dns.TypeToString[tc.qtype], r)
		}
		if r.Question[0].Name != "App.Example.com." {
			t.Errorf("question case not kept: %q", r.Question[0].Name)
		}
		// The very first connection after the answer goes through: the
		// route was installed before the answer was written.
		c, err := e.client.DialContext(context.Background(), "tcp", tc.echo.String())
		if err != nil {
			t.Fatalf("first connection after the answer: %v", err)
		}
		netstacktest.EchoTCP(t, c, 4096)
		c.Close()
	}
	var learned []apptype.Route
	for _, r := range e.conn.Routes() {
		if r.Source == "learned" {
			learned = append(learned, r)
		}
	}
	if len(learned) != 2 || learned[0].Domain != "app.example.com" || learned[0].App != "web" || learned[0].State != apptype.StateAdvertised {
		t.Errorf("learned routes: %+v", learned)
	}

	// The policy grows a configured prefix covering the learned route:
	// the table settles to the prefix, the learned route coalesced into it.
	grown, err := apptype.ParsePolicy("grown.json", []byte(strings.Replace(dnsPolicy,
		`"allowPrivate": ["127.0.0.1/32", "::1/128"]}`, `"allowPrivate": ["127.0.0.1/32", "::1/128"], "routes": ["127.0.0.0/8"]}`, 1)))
	if err != nil {
		t.Fatal(err)
	}
	e.conn.SetPolicy(grown)
	var states []apptype.RouteState
	for _, r := range e.conn.Routes() {
		if r.Prefix.Addr().Is4() {
			states = append(states, r.State)
		}
	}
	if !slices.Equal(states, []apptype.RouteState{apptype.StateAdvertised, apptype.StateCoalesced}) {
		t.Errorf("after a covering prefix: %+v", e.conn.Routes())
	}
	adv := e.conn.Advertised(e.client.PublicKeyString()).Routes
	if !slices.Contains(adv, netip.MustParsePrefix("127.0.0.0/8")) || slices.Contains(adv, netip.MustParsePrefix("127.0.0.1/32")) {
		t.Errorf("advertised after coalescing: %v", adv)
	}
}

func TestDNSRefusalsAndPassThrough(t *testing.T) {
	netstacktest.CheckLeaks(t)
	e, up := dnsEnv(t)

	// Not an app's name: REFUSED, and the upstream is not asked.
	before := up.Queries.Load()
	if r := query(t, e, "other.org.", dns.TypeA, false); r.Rcode != dns.RcodeRefused {
		t.Errorf("other.org: %s, want REFUSED", dns.RcodeToString[r.Rcode])
	}
	// An app this connector does not serve (its connectors name another
	// tag), and an app this peer may not use: REFUSED too.
	for _, name := range []string{"elsewhere.example.net.", "eng.example.org."} {
		if r := query(t, e, name, dns.TypeA, false); r.Rcode != dns.RcodeRefused {
			t.Errorf("%s: %s, want REFUSED", name, dns.RcodeToString[r.Rcode])
		}
	}
	if n := up.Queries.Load() - before; n != 0 {
		t.Errorf("upstream asked %d times for refused names", n)
	}

	// A wildcard name at depth; NXDOMAIN and SERVFAIL pass through.
	if r := query(t, e, "deep.x.y.example.com.", dns.TypeA, false); r.Rcode != dns.RcodeSuccess || len(dnszone.AnswerAddrs(r)) != 1 {
		t.Errorf("wildcard name: %v", r)
	}
	// A name from the upstream's wildcard zone, through a CNAME.
	if r := query(t, e, "any.thing.wild.example.com.", dns.TypeA, false); r.Rcode != dns.RcodeSuccess ||
		!slices.Equal(dnszone.AnswerAddrs(r), []netip.Addr{netip.MustParseAddr("127.0.0.1")}) {
		t.Errorf("wildcard zone: %v", r)
	}
	if r := query(t, e, "missing.example.com.", dns.TypeA, false); r.Rcode != dns.RcodeNameError {
		t.Errorf("missing name: %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
	if r := query(t, e, "broken.example.com.", dns.TypeA, false); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("broken name: %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	if r := query(t, e, "apex-only.example.com.", dns.TypeTXT, true); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Errorf("TXT: %v", r)
	}

	// The unsafe answer is returned but not routed.
	r := query(t, e, "internal.example.com.", dns.TypeA, false)
	if !slices.Contains(dnszone.AnswerAddrs(r), netip.MustParseAddr("10.0.0.1")) {
		t.Fatalf("unsafe answer not returned: %v", r)
	}
	if err := dialOK(t, e, netip.MustParseAddrPort("10.0.0.1:80")); err == nil {
		t.Error("connection to an unsafe answer succeeded")
	}
	// A CNAME loop: an answer, promptly, and no routes.
	if r := query(t, e, "loop.example.com.", dns.TypeA, false); r.Rcode != dns.RcodeSuccess {
		t.Errorf("loop: %s", dns.RcodeToString[r.Rcode])
	}
	st := e.conn.Stats()
	if st.Routes.UnsafeRefused != 1 || st.Routes.ChainRefused != 1 {
		t.Errorf("route stats %+v: want one unsafe answer and one bad chain", st.Routes)
	}
	if st.DNS.Refused != 3 || st.DNS.ServFail != 1 {
		t.Errorf("dns stats %+v", st.DNS)
	}
	for _, r := range e.conn.Routes() {
		if r.Source == "learned" && r.Prefix.Addr() != netip.MustParseAddr("127.0.0.1") {
			t.Errorf("unexpected learned route %+v", r)
		}
	}
	if n := e.dialer.Dials.Load(); n != 0 {
		t.Errorf("%d host dials; want none", n)
	}
}

func TestDNSUpstreamDown(t *testing.T) {
	netstacktest.CheckLeaks(t)
	// An upstream that is not there: SERVFAIL, promptly.
	dead := netstacktest.ClosedPort(t, "udp", "127.0.0.1")
	e := newEnvWith(t, connector.Config{DNSUpstreams: []string{dead.String()}, DNSTimeout: 2 * time.Second}, dnsPolicy)
	start := time.Now()
	r := query(t, e, "app.example.com.", dns.TypeA, false)
	if r.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("SERVFAIL after %v", d)
	}
}

// TestDNSMalformed: garbage to the DNS port gets no crash and the server
// keeps answering.
func TestDNSMalformed(t *testing.T) {
	netstacktest.CheckLeaks(t)
	e, _ := dnsEnv(t)
	c, err := e.client.DialContext(context.Background(), "udp", net.JoinHostPort(connV4.Addr().String(), "53"))
	if err != nil {
		t.Fatal(err)
	}
	for _, junk := range [][]byte{{}, {0}, []byte("not dns at all"), make([]byte, 600)} {
		c.Write(junk)
	}
	m := new(dns.Msg)
	m.SetQuestion("app.example.com.", dns.TypeA)
	m.Question = append(m.Question, m.Question[0]) // two questions
	b, _ := m.Pack()
	c.Write(b)
	// Junk may be answered too (FORMERR with whatever ID it had); look
	// for the reply to the two-question message.
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1500)
	for {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("no reply to the two-question message: %v", err)
		}
		var r dns.Msg
		if r.Unpack(buf[:n]) != nil || r.Id != m.Id {
			continue
		}
		if r.Rcode != dns.RcodeFormatError {
			t.Errorf("two questions: %s, want FORMERR", dns.RcodeToString[r.Rcode])
		}
		break
	}
	c.Close()
	if r := query(t, e, "app.example.com.", dns.TypeA, false); r.Rcode != dns.RcodeSuccess {
		t.Errorf("after garbage: %s", dns.RcodeToString[r.Rcode])
	}
}

// TestLearnedRoutesSurviveRestart: a route learned from DNS is in the
// state directory after Close and forwarded by the next connector before
// any new DNS answer.
func TestLearnedRoutesSurviveRestart(t *testing.T) {
	netstacktest.CheckLeaks(t)
	state := t.TempDir()
	up := dnstest.New(t, "app.example.com. 60 IN A 127.0.0.1")
	echo := netstacktest.TCPEcho(t, "127.0.0.1:0")
	cfg := connector.Config{DNSUpstreams: []string{up.Addr}, StateDir: state}

	e := newEnvWith(t, cfg, dnsPolicy)
	query(t, e, "app.example.com.", dns.TypeA, false)
	e.client.Close()
	e.conn.Close()

	e2 := newEnvWith(t, cfg, dnsPolicy)
	found := false
	for _, r := range e2.conn.Routes() {
		found = found || (r.Source == "learned" && r.Prefix == netip.MustParsePrefix("127.0.0.1/32") && r.Domain == "app.example.com")
	}
	if !found {
		t.Fatalf("learned route not restored: %+v", e2.conn.Routes())
	}
	asked := up.Queries.Load()
	if err := dialOK(t, e2, echo); err != nil {
		t.Fatalf("restored route not forwarded: %v", err)
	}
	if up.Queries.Load() != asked {
		t.Error("DNS was asked again")
	}
}

func TestRouteAPIAndWatch(t *testing.T) {
	netstacktest.CheckLeaks(t)
	e, _ := dnsEnv(t)
	hc := &http.Client{Transport: &http.Transport{DialContext: e.client.DialContext}, Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	base := "http://" + connV4.Addr().String()

	var first apptype.RouteSet
	getJSON(t, hc, base+"/v1/routes", &first)
	if len(first.Routes) != 0 {
		t.Fatalf("routes before any answer: %v", first.Routes)
	}

	req, _ := http.NewRequest("GET", base+"/v1/routes?watch=1", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := hc.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	var cur apptype.RouteSet
	if err := dec.Decode(&cur); err != nil || cur.Version != first.Version {
		t.Fatalf("first watch line: %+v, %v", cur, err)
	}
	query(t, e, "app.example.com.", dns.TypeA, false)
	for !slices.Contains(cur.Routes, netip.MustParsePrefix("127.0.0.1/32")) {
		if err := dec.Decode(&cur); err != nil {
			t.Fatalf("watch: %v", err)
		}
		if cur.Version <= first.Version {
			t.Fatalf("version did not grow: %d", cur.Version)
		}
	}

	// The admin API lists the route with its app and domain.
	srv := httptest.NewServer(e.conn.AdminHandler())
	defer srv.Close()
	var table struct {
		Routes []apptype.Route `json:"routes"`
	}
	getJSON(t, srv.Client(), srv.URL+"/v1/routes", &table)
	if len(table.Routes) != 1 || table.Routes[0].Domain != "app.example.com" || table.Routes[0].App != "web" {
		t.Errorf("admin routes: %+v", table.Routes)
	}
	r, err := srv.Client().Get(srv.URL + "/v1/routes?format=allowed-ips")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if strings.TrimSpace(string(b)) != "127.0.0.1/32" {
		t.Errorf("allowed-ips: %q", b)
	}
}

func getJSON(t *testing.T, c *http.Client, url string, v any) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

func TestManualApprovalBlocksUntilApproved(t *testing.T) {
	netstacktest.CheckLeaks(t)
	up := dnstest.New(t, "app.example.com. 60 IN A 127.0.0.1")
	e := newEnvWith(t, connector.Config{DNSUpstreams: []string{up.Addr}}, `[{"name": "m", "connectors": ["*"],
		"domains": ["app.example.com"], "allowPrivate": ["127.0.0.1/32"], "approval": "manual"}]`)
	echo := netstacktest.TCPEcho(t, "127.0.0.1:0")
	query(t, e, "app.example.com.", dns.TypeA, false)
	if rs := e.conn.Routes(); len(rs) != 1 || rs[0].State != apptype.StatePending {
		t.Fatalf("routes %+v, want one pending", rs)
	}
	if err := dialOK(t, e, echo); err == nil {
		t.Fatal("pending route forwarded")
	}
	srv := httptest.NewServer(e.conn.AdminHandler())
	defer srv.Close()
	// A browser (a form on some web page, or DNS rebinding) is refused.
	for _, h := range []http.Header{{"Origin": {"https://evil.example"}}, {"Sec-Fetch-Site": {"cross-site"}}} {
		req, _ := http.NewRequest("POST", srv.URL+"/v1/routes/approve?all=1", nil)
		req.Header = h
		if resp, err := srv.Client().Do(req); err != nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("browser request: %v %v", resp.Status, err)
		} else {
			resp.Body.Close()
		}
	}
	req, _ := http.NewRequest("POST", srv.URL+"/v1/routes/approve?all=1", nil)
	req.Host = "rebind.evil.example"
	if resp, err := srv.Client().Do(req); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("rebinding request: %v %v", resp.Status, err)
	} else {
		resp.Body.Close()
	}
	if rs := e.conn.Routes(); rs[0].State != apptype.StatePending {
		t.Fatal("a refused request approved a route")
	}
	resp, err := srv.Client().Post(srv.URL+"/v1/routes/approve?prefix=127.0.0.1", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var res struct{ Approved int }
	json.NewDecoder(resp.Body).Decode(&res)
	resp.Body.Close()
	if res.Approved != 1 {
		t.Fatalf("approved %d", res.Approved)
	}
	if err := dialOK(t, e, echo); err != nil {
		t.Fatalf("approved route not forwarded: %v", err)
	}
	bad, _ := srv.Client().Post(srv.URL+"/v1/routes/approve?prefix=127.0.0.1/8", "", nil)
	if bad.StatusCode != http.StatusBadRequest {
		t.Errorf("approve with host bits: %s", bad.Status)
	}
	bad.Body.Close()
}

// TestDNSInFlightLimit: one peer flooding questions at a silent upstream
// gets SERVFAIL beyond its share, and the goroutines it can pin are
// bounded.
func TestDNSInFlightLimit(t *testing.T) {
	netstacktest.CheckLeaks(t)
	silent, err := net.ListenPacket("udp", "127.0.0.1:0") // never answers
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	e := newEnvWith(t, connector.Config{DNSUpstreams: []string{silent.LocalAddr().String()}, DNSTimeout: time.Second}, dnsPolicy)
	c, err := e.client.DialContext(context.Background(), "udp", net.JoinHostPort(connV4.Addr().String(), "53"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 200
	base := runtime.NumGoroutine()
	peak := 0
	for i := range n {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("n%d.example.com.", i), dns.TypeA)
		b, _ := m.Pack()
		c.Write(b)
		peak = max(peak, runtime.NumGoroutine()-base)
	}
	netstacktest.WaitFor(t, func() bool {
		st := e.conn.Stats().DNS
		return st.Limited+st.ServFail >= n
	})
	if st := e.conn.Stats().DNS; st.Limited == 0 {
		t.Errorf("no question was limited: %+v", st)
	}
	if peak > 150 {
		t.Errorf("%d goroutines above baseline during the flood", peak)
	}
}
