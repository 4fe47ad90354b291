package connector_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/dnstest"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// An app with "prefetch" has its exact domains resolved by the connector
// at start, before any peer asks, and again before the routes would
// expire; its wildcard domains are not guessed at, and a name is not
// asked again sooner than it needs.
func TestPrefetch(t *testing.T) {
	netstacktest.CheckLeaks(t)
	clk := newTestClock()
	up := dnstest.New(t,
		"pre.example.com. 60 IN A 127.0.0.1",
		"pre.example.com. 60 IN AAAA ::1",
		"lazy.example.org. 60 IN A 127.0.0.1",
	)
	e := newEnvWith(t, connector.Config{
		DNSUpstreams: []string{up.Addr}, Now: clk.now,
		RouteTTLMin: time.Second, RouteTTLMax: time.Hour, RouteGrace: -1,
	}, `[
	  {"name": "pre", "connectors": ["*"], "domains": ["pre.example.com", "*.wild.example.com"], "prefetch": true,
	   "allowPrivate": ["127.0.0.1/32", "::1/128"]},
	  {"name": "lazy", "connectors": ["*"], "domains": ["lazy.example.org"], "allowPrivate": ["127.0.0.1/32"]}
	]`)
	echo := netstacktest.TCPEcho(t, "127.0.0.1:0")
	netstacktest.WaitFor(t, func() bool { return len(e.conn.Routes()) == 2 })
	for _, r := range e.conn.Routes() {
		if r.App != "pre" || r.Domain != "pre.example.com" {
			t.Errorf("prefetched route %+v", r)
		}
	}
	// No peer asked: the first connection goes through.
	if err := dialOK(t, e, echo); err != nil {
		t.Fatalf("connection to a prefetched route: %v", err)
	}
	if n := up.Queries.Load(); n != 2 {
		t.Errorf("%d questions upstream, want 2 (A and AAAA of the one exact name)", n)
	}
	time.Sleep(2 * time.Second) // four checks for due names; none is due
	if n := up.Queries.Load(); n != 2 {
		t.Errorf("%d questions upstream with nothing due, want 2", n)
	}
	// 54 s in (the routes live 60 s): asked again, the routes renewed
	// before they expire.
	expires := e.conn.Routes()[0].Expires
	clk.advance(55 * time.Second)
	netstacktest.WaitFor(t, func() bool { return up.Queries.Load() == 4 })
	netstacktest.WaitFor(t, func() bool { return e.conn.Routes()[0].Expires.After(expires) })
	clk.advance(10 * time.Second) // past the first answers' 60 s
	time.Sleep(500 * time.Millisecond)
	if rs := e.conn.Routes(); len(rs) != 2 || !rs[0].Prefix.Contains(netip.MustParseAddr("127.0.0.1")) {
		t.Errorf("after the first answers' lifetime: %+v", rs)
	}
}
