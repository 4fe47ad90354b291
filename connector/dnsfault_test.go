package connector_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/dnstest"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// Upstream behaviours of faultyUpstream.
const (
	upForward   int32 = iota // relay to the real upstream
	upBlackhole              // never answer
	upGarbage                // answer with the question's ID and junk
)

// faultyUpstream is a UDP DNS "server" on 127.0.0.1 whose behaviour the
// test switches: it relays to a real upstream, swallows questions, or
// answers with junk.
type faultyUpstream struct {
	pc   net.PacketConn
	real string
	mode atomic.Int32
	wg   sync.WaitGroup
}

func startFaultyUpstream(t *testing.T, real string) *faultyUpstream {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &faultyUpstream{pc: pc, real: real}
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(func() { pc.Close(); f.wg.Wait() })
	return f
}

func (f *faultyUpstream) serve() {
	defer f.wg.Done()
	buf := make([]byte, 65535)
	for {
		n, from, err := f.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		q := append([]byte(nil), buf[:n]...)
		switch f.mode.Load() {
		case upBlackhole:
		case upGarbage:
			if len(q) >= 2 {
				f.pc.WriteTo(append(q[:2:2], "\x81\x80 not a DNS message"...), from)
			}
		default:
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				c, err := net.Dial("udp", f.real)
				if err != nil {
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(2 * time.Second))
				c.Write(q)
				rb := make([]byte, 65535)
				if m, err := c.Read(rb); err == nil {
					f.pc.WriteTo(rb[:m], from)
				}
			}()
		}
	}
}

// logCounter counts log records whose message contains a substring.
type logCounter struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logCounter) Enabled(context.Context, slog.Level) bool { return true }
func (l *logCounter) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.msgs = append(l.msgs, r.Message)
	l.mu.Unlock()
	return nil
}
func (l *logCounter) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logCounter) WithGroup(string) slog.Handler      { return l }

func (l *logCounter) count(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if strings.Contains(m, sub) {
			n++
		}
	}
	return n
}

// TestDNSUpstreamFaults: an upstream that stops answering, comes back,
// then answers junk. Questions meanwhile get SERVFAIL within the 5 s the
// query allows (the question's own budget is the default, 5 s; one try
// is 2 s), each run of failures is logged once, and answers resume when
// the upstream does.
func TestDNSUpstreamFaults(t *testing.T) {
	netstacktest.CheckLeaks(t)
	real := dnstest.New(t,
		"a1.example.com. 60 IN A 127.0.0.1",
		"a2.example.com. 60 IN A 127.0.0.1",
		"a3.example.com. 60 IN A 127.0.0.1",
	)
	up := startFaultyUpstream(t, real.Addr)
	logs := &logCounter{}
	e := newEnvWith(t, connector.Config{DNSUpstreams: []string{up.pc.LocalAddr().String()}, Logger: slog.New(logs)},
		`[{"name": "web", "connectors": ["*"], "domains": ["*.example.com"], "allowPrivate": ["127.0.0.1/32"]}]`)

	ask := func(name string) *dns.Msg {
		t.Helper()
		// queryWithin fails the test if no reply comes within 5 s.
		return queryWithin(t, e, name, dns.TypeA, 5*time.Second)
	}
	if r := ask("a1.example.com."); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("healthy upstream: %v", r)
	}

	up.mode.Store(upBlackhole)
	for _, name := range []string{"a2.example.com.", "a3.example.com.", "a2.example.com."} {
		if r := ask(name); r.Rcode != dns.RcodeServerFailure {
			t.Fatalf("blackholed upstream, %s: rcode %s, want SERVFAIL", name, dns.RcodeToString[r.Rcode])
		}
	}
	if n := logs.count("failing"); n != 1 {
		t.Errorf("%d log lines about the failing upstream after 3 failed questions, want 1", n)
	}

	up.mode.Store(upForward)
	if r := ask("a2.example.com."); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("upstream back: %v", r)
	}
	if n := logs.count("answering again"); n != 1 {
		t.Errorf("%d log lines about the upstream answering again, want 1", n)
	}

	up.mode.Store(upGarbage)
	for range 3 {
		if r := ask("a3.example.com."); r.Rcode != dns.RcodeServerFailure {
			t.Fatalf("garbage from upstream: rcode %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
		}
	}
	if n := logs.count("failing"); n != 2 {
		t.Errorf("%d log lines about a failing upstream after the junk, want 2 (one per run)", n)
	}
	up.mode.Store(upForward)
	if r := ask("a3.example.com."); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("upstream back after junk: %v", r)
	}
	if st := e.conn.Stats(); st.DNS.ServFail != 6 {
		t.Errorf("SERVFAIL counter %d, want 6", st.DNS.ServFail)
	}
}

// queryWithin is query with a deadline of d for the reply.
func queryWithin(t *testing.T, e *env, name string, qtype uint16, d time.Duration) *dns.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	c, err := e.client.DialContext(ctx, "udp", net.JoinHostPort(connV4.Addr().String(), "53"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	co := &dns.Conn{Conn: c, UDPSize: 1232}
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c.SetDeadline(time.Now().Add(d))
	if err := co.WriteMsg(m); err != nil {
		t.Fatal(err)
	}
	r, err := co.ReadMsg()
	if err != nil {
		t.Fatalf("%s: no reply within %v: %v", name, d, err)
	}
	return r
}

// TestDNSOverTCPIdleConnections: 1,000 idle DNS-over-TCP connections from
// a peer do not delay its next question, over UDP or TCP; the connector
// closes them after the idle timeout; and beyond the per-peer cap a new
// connection is closed at once while UDP questions still get answers.
func TestDNSOverTCPIdleConnections(t *testing.T) {
	netstacktest.CheckLeaks(t)
	real := dnstest.New(t, "a1.example.com. 60 IN A 127.0.0.1")
	const idle = 1000
	// Long enough to open them all (with -race) before the first is
	// closed.
	const idleTimeout = 5 * time.Second
	e := newEnvWith(t, connector.Config{DNSUpstreams: []string{real.Addr},
		DNSTCPIdleTimeout: idleTimeout, MaxDNSTCPConnsPerPeer: idle + 1},
		`[{"name": "web", "connectors": ["*"], "domains": ["*.example.com"], "allowPrivate": ["127.0.0.1/32"]}]`)
	dnsAddr := net.JoinHostPort(connV4.Addr().String(), "53")
	rcvbuf0 := udpRcvbufErrors(t)

	// dialIdle opens n connections, 32 at a time.
	dialIdle := func(n int) []net.Conn {
		t.Helper()
		start := time.Now()
		conns := make([]net.Conn, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for w := range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < n; i += 32 {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					conns[i], errs[i] = e.client.DialContext(ctx, "tcp", dnsAddr)
					cancel()
				}
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("idle connection %d: %v", i+1, err)
			}
		}
		t.Logf("%d connections opened in %v", n, time.Since(start))
		return conns
	}
	// waitClosed waits until each conn has seen the connector's close (a
	// read returns EOF or a reset, not a timeout). within bounds the wait
	// for the first; after that, within bounds the wait since the last
	// conn seen closed. Closing 1,000 connections within two seconds, with
	// both ends in this process under -race and beside the other packages'
	// tests, queues the FINs (and their retransmissions) for seconds; that
	// is slow, not stuck, and the connector's own count (checked by the
	// caller) is what says it closed them in time.
	waitClosed := func(conns []net.Conn, within time.Duration) {
		t.Helper()
		progress := time.Now()
		for i, c := range conns {
			c.SetReadDeadline(progress.Add(within))
			var b [1]byte
			_, err := c.Read(b[:])
			var ne net.Error
			if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
				// Which side kept it: the connector's count says whether
				// its server closed the connection; the endpoint states,
				// the stack's timeouts and the host's UDP receive errors
				// say whether the FIN is still on its way or was lost.
				st := e.conn.Stats()
				t.Fatalf("connection %d still open %v after the last one closed (read: %v); connector: %d DNS-over-TCP connections open, "+
					"%d TCP timeouts, %d retransmitted segments, TCP endpoints %v, tun %+v; client: TCP endpoints %v, tun %+v; "+
					"host UDP receive-buffer errors since the test began: %d",
					i+1, within, err, st.DNS.TCPConns, st.Netstack.TCPTimeouts, st.Netstack.TCPRetransmits, e.conn.TCPStates(), st.Tun,
					e.client.TCPStates(), e.client.TunStats(), udpRcvbufErrors(t)-rcvbuf0)
			}
			c.Close()
			progress = time.Now()
		}
	}
	// drained waits until neither stack has a connection left closing
	// (only TIME-WAIT and listeners), failing if that stops changing for
	// 10 s.
	drained := func() {
		t.Helper()
		closing := func() int {
			n := 0
			for _, m := range []map[string]int{e.conn.TCPStates(), e.client.TCPStates()} {
				for st, k := range m {
					if st != "TIME-WAIT" && st != "LISTEN" {
						n += k
					}
				}
			}
			return n
		}
		last, since := closing(), time.Now()
		for last > 0 {
			if time.Since(since) > 10*time.Second {
				t.Fatalf("%d connections still closing, none for 10 s: connector %v, client %v", last, e.conn.TCPStates(), e.client.TCPStates())
			}
			time.Sleep(50 * time.Millisecond)
			if n := closing(); n != last {
				last, since = n, time.Now()
			}
		}
	}

	conns := dialIdle(idle)
	opened := time.Now()
	netstacktest.WaitFor(t, func() bool { return e.conn.Stats().DNS.TCPConns == idle })
	if r := queryWithin(t, e, "a1.example.com.", dns.TypeA, 5*time.Second); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("UDP question beside %d idle TCP connections: %v", idle, r)
	}
	if r := query(t, e, "a1.example.com.", dns.TypeA, true); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("TCP question beside %d idle TCP connections: %v", idle, r)
	}
	// The connector closes them all within two idle timeouts of their
	// opening (its own count), and each client end sees it.
	for deadline := opened.Add(2 * idleTimeout); e.conn.Stats().DNS.TCPConns > 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d idle connections still open %v after they were opened", e.conn.Stats().DNS.TCPConns, 2*idleTimeout)
		}
	}
	waitClosed(conns, 10*time.Second)
	drained()

	// At the cap: the next connection is closed at once.
	conns = dialIdle(idle + 1)
	netstacktest.WaitFor(t, func() bool { return e.conn.Stats().DNS.TCPConns == idle+1 })
	over := dialIdle(1)
	waitClosed(over, idleTimeout/2) // before any idle timeout could
	if n := e.conn.Stats().DNS.TCPConnsRefused; n != 1 {
		t.Errorf("%d connections refused at the cap, want 1", n)
	}
	if r := queryWithin(t, e, "a1.example.com.", dns.TypeA, 5*time.Second); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("UDP question at the TCP cap: %v", r)
	}
	for _, c := range conns {
		c.Close()
	}
	netstacktest.WaitFor(t, func() bool { return e.conn.Stats().DNS.TCPConns == 0 })
}

// TestDNSManyNamesEvictOldest asks for 2,000 distinct names under a
// wildcard app, each answered with its own address, against a cap of 500
// learned routes: every answer comes back, the cap holds, and the routes
// left are those of the newest names.
func TestDNSManyNamesEvictOldest(t *testing.T) {
	netstacktest.CheckLeaks(t)
	const names, capacity = 2000, 500
	records := make([]string, names)
	addr := func(i int) netip.Addr {
		return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 13: 7, 14: byte(i >> 8), 15: byte(i)})
	}
	for i := range names {
		records[i] = fmt.Sprintf("n%d.w.example.com. 60 IN AAAA %s", i, addr(i))
	}
	up := dnstest.New(t, records...)
	e := newEnvWith(t, connector.Config{DNSUpstreams: []string{up.Addr}, MaxRoutes: capacity, MaxRoutesPerApp: capacity,
		LearnRate: 1e9, LearnBurst: names}, // the eviction is tested here, not the learning rate
		`[{"name": "w", "connectors": ["*"], "domains": ["*.w.example.com"]}]`)
	c, err := e.client.DialContext(ctxTimeout(t, 5*time.Second), "udp", net.JoinHostPort(connV4.Addr().String(), "53"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	co := &dns.Conn{Conn: c}
	for i := range names {
		m := new(dns.Msg).SetQuestion(fmt.Sprintf("n%d.w.example.com.", i), dns.TypeAAAA)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if err := co.WriteMsg(m); err != nil {
			t.Fatal(err)
		}
		r, err := co.ReadMsg()
		if err != nil || r.Id != m.Id || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
			t.Fatalf("name %d: %v %v", i, r, err)
		}
	}
	var learned []netip.Addr
	for _, r := range e.conn.Routes() {
		if r.Source == "learned" {
			learned = append(learned, r.Prefix.Addr())
		}
	}
	if len(learned) != capacity {
		t.Fatalf("%d learned routes at a cap of %d", len(learned), capacity)
	}
	for i := names - capacity; i < names; i++ {
		if !slices.Contains(learned, addr(i)) {
			t.Fatalf("route of name %d (one of the %d newest) is missing", i, capacity)
		}
	}
	if st := e.conn.Stats(); st.Routes.Evicted != names-capacity {
		t.Errorf("Evicted = %d, want %d", st.Routes.Evicted, names-capacity)
	}
}

// udpRcvbufErrors is the host's count of UDP datagrams dropped at full
// receive buffers (/proc/net/snmp), or -1 where it cannot be read.
func udpRcvbufErrors(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return -1
	}
	var names []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, n := range names {
			if n == "RcvbufErrors" && i < len(f) {
				v, err := strconv.ParseInt(f[i], 10, 64)
				if err == nil {
					return v
				}
			}
		}
	}
	return -1
}

// A peer flooding the connector with questions while the upstream is
// silent holds no more goroutines than its questions in flight (64): the
// rest are answered SERVFAIL by the reading goroutine. The goroutines
// counted are those answering DNS (or started to, by a server that starts
// one per datagram), read from their stacks: the process's total moves with
// whatever else is winding down.
func TestDNSFloodHoldsBoundedGoroutines(t *testing.T) {
	netstacktest.CheckLeaks(t)
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	e := newEnvWith(t, connector.Config{DNSUpstreams: []string{silent.LocalAddr().String()}, DNSTimeout: 2 * time.Second},
		`[{"name": "web", "connectors": ["*"], "domains": ["*.example.com"]}]`)
	c, err := e.client.DialContext(ctxTimeout(t, 5*time.Second), "udp", net.JoinHostPort(connV4.Addr().String(), "53"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	query(t, e, "warm.example.org.", dns.TypeA, false) // the session is up
	answering := func() int {
		buf := make([]byte, 1<<22)
		n := 0
		for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
			if strings.Contains(g, "(*dnsService).answer(") || strings.Contains(g, "(*Server).serveUDPPacket") {
				n++
			}
		}
		return n
	}
	peak := 0
	for i := range 3000 {
		m := new(dns.Msg).SetQuestion(fmt.Sprintf("n%d.example.com.", i), dns.TypeA)
		b, _ := m.Pack()
		c.Write(b)
		if i%100 == 0 {
			peak = max(peak, answering())
		}
	}
	t.Logf("peak: %d goroutines answering DNS", peak)
	if peak > 64 {
		t.Errorf("%d goroutines answering DNS during a flood of 3,000 questions; want at most the peer's 64 in flight", peak)
	}
	if n := e.conn.Stats().DNS.Limited; n == 0 {
		t.Error("no question was answered at the cap")
	}
}
