package connector_test

import (
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/apptype"
	"github.com/appconnector/appconnector/connector/dnstest"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// testClock is a clock a test moves by hand; safe for concurrent use.
type testClock struct{ ns atomic.Int64 }

func newTestClock() *testClock {
	c := &testClock{}
	c.ns.Store(time.Now().UnixNano())
	return c
}

func (c *testClock) now() time.Time            { return time.Unix(0, c.ns.Load()) }
func (c *testClock) advance(d time.Duration)   { c.ns.Add(int64(d)) }
func (c *testClock) since(t time.Time) float64 { return c.now().Sub(t).Seconds() }

// A learned route lives as long as its answer's TTL says (within the
// bounds), longer while a flow uses it and for the grace period after;
// the route API's watchers see it go.
func TestLearnedRouteLifetime(t *testing.T) {
	netstacktest.CheckLeaks(t)
	clk := newTestClock()
	up := dnstest.New(t,
		"short.example.com. 90 IN A 127.0.0.1",
		"used.example.com. 90 IN AAAA ::1",
	)
	e := newEnvWith(t, connector.Config{
		DNSUpstreams: []string{up.Addr}, Now: clk.now,
		RouteTTLMin: time.Second, RouteTTLMax: time.Hour, RouteGrace: 2 * time.Minute,
	}, `[{"name": "web", "connectors": ["*"], "domains": ["*.example.com"], "allowPrivate": ["127.0.0.1/32", "::1/128"]}]`)
	echo6 := netstacktest.TCPEcho(t, "[::1]:0")
	start := clk.now()
	query(t, e, "short.example.com.", dns.TypeA, false)
	query(t, e, "used.example.com.", dns.TypeAAAA, false)
	for _, r := range e.conn.Routes() {
		if want := start.Add(90 * time.Second); r.Expires.Sub(want).Abs() > time.Second {
			t.Errorf("%v expires %v, want %v (the answer's TTL)", r.Prefix, r.Expires, want)
		}
	}

	sc := watchDiffs(t, e)
	ctx := ctxTimeout(t, 30*time.Second)
	removed := func() []netip.Prefix {
		t.Helper()
		if !sc.Scan() {
			t.Fatalf("no update: %v", sc.Err())
		}
		var d apptype.RouteDiff
		if err := json.Unmarshal(sc.Bytes(), &d); err != nil {
			t.Fatalf("%s: %v", sc.Bytes(), err)
		}
		return d.Removed
	}

	// A flow to ::1 stays open past both answers' lifetimes.
	c, err := e.client.DialContext(ctx, "tcp", echo6.String())
	if err != nil {
		t.Fatal(err)
	}
	ping(t, c)
	clk.advance(91 * time.Second)
	if got := removed(); !slices.Equal(got, []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}) {
		t.Fatalf("removed at +%.0fs: %v, want 127.0.0.1/32 only", clk.since(start), got)
	}
	rs := e.conn.Routes()
	if len(rs) != 1 || !rs[0].InUse {
		t.Fatalf("routes while the flow is open: %+v", rs)
	}
	ping(t, c)
	c.Close()
	// The flow's end starts the grace period.
	deadline := time.Now().Add(10 * time.Second)
	for rs = e.conn.Routes(); len(rs) == 1 && rs[0].InUse && time.Now().Before(deadline); rs = e.conn.Routes() {
		time.Sleep(10 * time.Millisecond)
	}
	if len(rs) != 1 || rs[0].InUse || rs[0].Expires.Sub(clk.now().Add(2*time.Minute)).Abs() > time.Second {
		t.Fatalf("after the flow ended: %+v, want the route with the grace period left", rs)
	}
	clk.advance(time.Minute)
	time.Sleep(time.Second) // sweeps run every 250 ms here
	if got := e.conn.Routes(); len(got) != 1 {
		t.Fatalf("within the grace period: %+v", got)
	}
	clk.advance(time.Minute + time.Second)
	if got := removed(); !slices.Equal(got, []netip.Prefix{netip.MustParsePrefix("::1/128")}) {
		t.Fatalf("removed after the grace period: %v, want ::1/128", got)
	}
}

// ping sends a few bytes on c, an echo connection, and reads them back.
func ping(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
}
