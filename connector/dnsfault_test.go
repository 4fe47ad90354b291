package connector_test

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/dnstest"
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
	checkLeaks(t)
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
