package connector_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/netstack"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// Pings from the client peer through real WireGuard to the connector. The
// tests that need the host to allow ICMP sockets run in a network
// namespace of their own, where they set ping_group_range.

const (
	echoRequest4, echoReply4 = 8, 0
	echoRequest6, echoReply6 = 128, 129
	unreach4, adminProhib4   = 3, 13
	unreach6, adminProhib6   = 1, 1
)

type pingCase struct {
	name           string
	src, dst       netip.Addr
	request, reply uint8
}

func pingCases() []pingCase {
	return []pingCase{
		{"ipv4", clientV4.Addr(), netip.MustParseAddr("127.0.0.1"), echoRequest4, echoReply4},
		{"ipv6", clientV6.Addr(), netip.MustParseAddr("::1"), echoRequest6, echoReply6},
	}
}

// ping sends one echo request from the client peer.
func (e *env) ping(t *testing.T, src, dst netip.Addr, ident, seq uint16, payload []byte) {
	t.Helper()
	if err := e.client.WriteRawPacket(netstacktest.EchoRequest(src, dst, ident, seq, payload)); err != nil {
		t.Fatal(err)
	}
}

// nextICMP returns the next ICMP packet the client receives that match
// accepts, failing the test after 10 s without one.
func (e *env) nextICMP(t *testing.T, match func(netstacktest.ICMP) bool) netstacktest.ICMP {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m := <-e.icmp:
			if match(m) {
				return m
			}
		case <-deadline:
			t.Fatal("no matching ICMP packet within 10 s")
		}
	}
}

func randomPayload(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// TestPingForwarded: echo requests to a routed address come back as
// echo replies from it with the peer's identifier, sequence number and
// payload, through one host socket per identifier; the socket closes when
// idle, and /metrics counts it all.
func TestPingForwarded(t *testing.T) {
	if !netstacktest.InNetns(t, true) {
		return
	}
	netstacktest.CheckLeaks(t)
	e := newEnv(t, netstack.Config{ICMPIdleTimeout: time.Hour})
	for i, tc := range pingCases() {
		t.Run(tc.name, func(t *testing.T) {
			// Two ping runs (identifiers) with the same sequence
			// numbers, interleaved: each gets its own replies.
			idents := []uint16{0x1234, 0xbeef}
			sizes := []int{0, 56, 1300}
			for seq := range uint16(3) {
				for _, ident := range idents {
					payload := randomPayload(sizes[seq])
					e.ping(t, tc.src, tc.dst, ident, seq, payload)
					m := e.nextICMP(t, func(m netstacktest.ICMP) bool { return m.Type == tc.reply })
					if m.Src != tc.dst || m.Dst != tc.src || m.Code != 0 || m.Ident != ident || m.Seq != seq || !m.ChecksumOK {
						t.Fatalf("reply %+v, want from %v to %v, ident %#x seq %d, checksum ok", m, tc.dst, tc.src, ident, seq)
					}
					if !bytes.Equal(m.Body, payload) {
						t.Fatalf("reply payload: %d bytes, not the %d sent", len(m.Body), len(payload))
					}
				}
			}
			n := uint64(6 * (i + 1))
			netstacktest.WaitFor(t, func() bool { st := e.conn.Stats().Netstack.ICMP; return st.Replies == n && st.Forwarded == n })
			st := e.conn.Stats().Netstack
			if want := uint64(2 * (i + 1)); st.ICMP.Flows != want || st.OpenICMPFlows != int(want) || st.OpenFlows != int(want) {
				t.Errorf("echo flows opened %d, open %d, open flows %d; want %d each (one per identifier)",
					st.ICMP.Flows, st.OpenICMPFlows, st.OpenFlows, want)
			}
			if e.dialer.Dials.Load() != 0 {
				t.Errorf("pings used the dialer")
			}
		})
	}
	_, body := scrape(t, e, "/metrics")
	for series, want := range map[string]float64{
		`appconnector_flows_open{proto="icmp"}`:                     4,
		`appconnector_flows_open{proto="udp"}`:                      0,
		`appconnector_flows_total{proto="icmp"}`:                    4,
		`appconnector_icmp_echo_requests_total{result="forwarded"}`: 12,
		`appconnector_icmp_echo_replies_total`:                      12,
	} {
		if v := metricValue(t, body, series); v != want {
			t.Errorf("%s = %v, want %v", series, v, want)
		}
	}
}

// TestPingIdleFlowCloses: an echo flow's socket is closed once no echo
// went either way for ICMPIdleTimeout.
func TestPingIdleFlowCloses(t *testing.T) {
	if !netstacktest.InNetns(t, true) {
		return
	}
	netstacktest.CheckLeaks(t)
	e := newEnv(t, netstack.Config{ICMPIdleTimeout: 50 * time.Millisecond})
	e.ping(t, clientV4.Addr(), netip.MustParseAddr("127.0.0.1"), 1, 1, nil)
	e.nextICMP(t, func(m netstacktest.ICMP) bool { return m.Type == echoReply4 })
	netstacktest.WaitFor(t, func() bool { return e.conn.Stats().Netstack.OpenICMPFlows == 0 })
	st := e.conn.Stats().Netstack
	if st.ICMP.IdleClosed != 1 || st.OpenFlows != 0 {
		t.Errorf("idle closed %d, open flows %d; want 1 and 0", st.ICMP.IdleClosed, st.OpenFlows)
	}
	// The next ping opens a new flow.
	e.ping(t, clientV4.Addr(), netip.MustParseAddr("127.0.0.1"), 1, 2, nil)
	if m := e.nextICMP(t, func(m netstacktest.ICMP) bool { return m.Type == echoReply4 }); m.Seq != 2 {
		t.Errorf("reply seq %d, want 2", m.Seq)
	}
	if n := e.conn.Stats().Netstack.ICMP.Flows; n != 2 {
		t.Errorf("echo flows opened %d, want 2", n)
	}
}

// checkProhibited checks that m is an administratively prohibited from
// dst to src quoting the echo request (ident, seq) from src to dst.
func checkProhibited(t *testing.T, m netstacktest.ICMP, tc pingCase, dst netip.Addr, ident, seq uint16) {
	t.Helper()
	typ, code := uint8(unreach4), uint8(adminProhib4)
	if tc.src.Is6() {
		typ, code = unreach6, adminProhib6
	}
	if m.Type != typ || m.Code != code || m.Src != dst || m.Dst != tc.src || !m.ChecksumOK {
		t.Fatalf("got %+v, want type %d code %d from %v to %v with a valid checksum", m, typ, code, dst, tc.src)
	}
	q, ok := netstacktest.ParseICMP(m.Body)
	if !ok || q.Type != tc.request || q.Src != tc.src || q.Dst != dst || q.Ident != ident || q.Seq != seq {
		t.Fatalf("quote %+v (parsed %v), want the echo request %#x/%d from %v to %v", q, ok, ident, seq, tc.src, dst)
	}
}

// TestPingRefusedIsProhibited: an echo request to an address outside the
// routes is answered with destination unreachable, administratively
// prohibited, quoting the request (so the kernel can hand it to the ping
// that sent it), and no host socket is opened. The stack's own address is
// answered by the stack itself.
func TestPingRefusedIsProhibited(t *testing.T) {
	netstacktest.CheckLeaks(t)
	e := newEnv(t, netstack.Config{})
	refused := map[string]netip.Addr{"ipv4": netip.MustParseAddr("127.0.0.2"), "ipv6": netip.MustParseAddr("fd99::7")}
	for _, tc := range pingCases() {
		t.Run(tc.name, func(t *testing.T) {
			dst := refused[tc.name]
			e.ping(t, tc.src, dst, 0x4242, 9, []byte("refused"))
			m := e.nextICMP(t, func(m netstacktest.ICMP) bool { return m.Type != tc.reply })
			checkProhibited(t, m, tc, dst, 0x4242, 9)
		})
		t.Run(tc.name+"/own address", func(t *testing.T) {
			own := connV4.Addr()
			if tc.src.Is6() {
				own = connV6.Addr()
			}
			e.ping(t, tc.src, own, 0x77, 3, []byte("to the connector"))
			m := e.nextICMP(t, func(m netstacktest.ICMP) bool { return true })
			if m.Type != tc.reply || m.Src != own || m.Ident != 0x77 || m.Seq != 3 || string(m.Body) != "to the connector" {
				t.Fatalf("got %+v, want an echo reply from %v", m, own)
			}
		})
	}
	st := e.conn.Stats().Netstack.ICMP
	if st.Refused != 2 || st.ProhibitedSent != 2 || st.Flows != 0 || st.Forwarded != 0 {
		t.Errorf("stats %+v, want 2 refused and answered, nothing forwarded", st)
	}
	_, body := scrape(t, e, "/metrics")
	if v := metricValue(t, body, `appconnector_flows_refused_total{proto="icmp",reason="policy"}`); v != 2 {
		t.Errorf("refused icmp flows in /metrics = %v, want 2", v)
	}
	if v := metricValue(t, body, `appconnector_icmp_prohibited_total`); v != 2 {
		t.Errorf("prohibited in /metrics = %v, want 2", v)
	}
}

// logLines is a slog handler that keeps the messages.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) Enabled(context.Context, slog.Level) bool { return true }
func (l *logLines) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, r.Message)
	return nil
}
func (l *logLines) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logLines) WithGroup(string) slog.Handler      { return l }

func (l *logLines) count(substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.lines {
		if strings.Contains(s, substr) {
			n++
		}
	}
	return n
}

// TestPingHostForbidden: where the host forbids ICMP sockets (here its
// ping_group_range admits no group), allowed echo requests are dropped,
// unanswered, and the reason is logged once.
func TestPingHostForbidden(t *testing.T) {
	if !netstacktest.InNetns(t, false) {
		return
	}
	netstacktest.CheckLeaks(t)
	logs := &logLines{}
	e := newEnvWith(t, connector.Config{Logger: slog.New(logs)}, testPolicy)
	for i, tc := range pingCases() {
		for seq := range uint16(3) {
			e.ping(t, tc.src, tc.dst, uint16(100+i), seq, []byte("forbidden"))
		}
	}
	netstacktest.WaitFor(t, func() bool { return e.conn.Stats().Netstack.ICMP.HostForbidden == 6 })
	// No socket was opened, so no reply can come.
	st := e.conn.Stats().Netstack
	if st.ICMP.HostForbidden != 6 || st.ICMP.Flows != 0 || st.ICMP.Forwarded != 0 || st.OpenFlows != 0 {
		t.Errorf("stats %+v, open flows %d; want 6 forbidden and no socket", st.ICMP, st.OpenFlows)
	}
	if n := logs.count("ping_group_range"); n != 1 {
		t.Errorf("%d log lines name ping_group_range, want 1:\n%s", n, strings.Join(logs.lines, "\n"))
	}
	_, body := scrape(t, e, "/metrics")
	if v := metricValue(t, body, `appconnector_icmp_echo_requests_total{result="host_forbidden"}`); v != 6 {
		t.Errorf("host_forbidden in /metrics = %v, want 6", v)
	}
}

// TestPingRateLimit: per peer, echo requests beyond the burst are dropped,
// and so are prohibited answers beyond theirs. The rate is so low that no
// token comes back while the test runs.
func TestPingRateLimit(t *testing.T) {
	netstacktest.CheckLeaks(t)
	const burst, sent = 3, 10
	e := newEnv(t, netstack.Config{ICMPRate: 1e-9, ICMPBurst: burst})
	routed, refused := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
	for seq := range uint16(sent) {
		e.ping(t, clientV4.Addr(), routed, 5, seq, nil)
	}
	for seq := range uint16(sent) {
		e.ping(t, clientV4.Addr(), refused, 6, seq, nil)
	}
	// Forwarded or not (whether this host allows ICMP sockets does not
	// matter here), every request is accounted for.
	netstacktest.WaitFor(t, func() bool {
		st := e.conn.Stats().Netstack.ICMP
		return st.Forwarded+st.HostForbidden+st.HostFailed+st.ProhibitedSent+st.RateLimited == 2*sent
	})
	st := e.conn.Stats().Netstack.ICMP
	if admitted := st.Forwarded + st.HostForbidden + st.HostFailed; admitted != burst {
		t.Errorf("echo requests admitted %d, want %d", admitted, burst)
	}
	if st.Refused != sent || st.ProhibitedSent != burst {
		t.Errorf("refused %d, prohibited sent %d; want %d and %d", st.Refused, st.ProhibitedSent, sent, burst)
	}
	if st.RateLimited != 2*(sent-burst) {
		t.Errorf("rate limited %d, want %d", st.RateLimited, 2*(sent-burst))
	}
	for range burst {
		m := e.nextICMP(t, func(m netstacktest.ICMP) bool { return m.Type == unreach4 })
		if m.Src != refused {
			t.Errorf("prohibited from %v, want %v", m.Src, refused)
		}
	}
}
