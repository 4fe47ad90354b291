package client_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector/client"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// TestStatus: Status reports each connector's state, round trip,
// WireGuard session and flows, the route set and the DNS counters, and
// follows a connector going down.
func TestStatus(t *testing.T) {
	netstacktest.CheckLeaks(t)
	s := newSetup(t, 2, nil)
	echo := netstacktest.TCPEcho(t, "127.0.0.1:0")
	c, err := s.client.DialContext(context.Background(), "tcp", fmt.Sprintf("app.example.com:%d", echo.Port()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	netstacktest.EchoTCP(t, c, 1024)
	if _, err := s.client.Resolver().LookupHost(context.Background(), "other.test"); err != nil {
		t.Fatal(err)
	}
	netstacktest.WaitFor(t, func() bool {
		st := s.client.Status()
		return st.Connectors[0].ProbeRTT.Count > 0 && st.Connectors[1].ProbeRTT.Count > 0
	})

	st := s.client.Status()
	if len(st.Connectors) != 2 {
		t.Fatalf("%d connectors, want 2", len(st.Connectors))
	}
	var used *client.ConnectorStatus
	for i, cs := range st.Connectors {
		tc := s.connectors[i]
		if cs.PublicKey != tc.key.PublicKey().String() || cs.Tunnel != tc.tunnel || cs.Endpoint != tc.peerFor().Endpoint {
			t.Errorf("connector %d: %+v, want key %s tunnel %v endpoint %s", i+1, cs, tc.key.PublicKey(), tc.tunnel, tc.peerFor().Endpoint)
		}
		if cs.State != client.StateUp || cs.RTT <= 0 || cs.Failovers != 0 {
			t.Errorf("connector %d: state %s, RTT %v, failovers %d; want up, a round trip, none", i+1, cs.State, cs.RTT, cs.Failovers)
		}
		if time.Since(cs.LastHandshake) > time.Minute || cs.RxBytes == 0 || cs.TxBytes == 0 {
			t.Errorf("connector %d: handshake %v, rx %d, tx %d", i+1, cs.LastHandshake, cs.RxBytes, cs.TxBytes)
		}
		if h := cs.ProbeRTT; len(h.Counts) != len(h.Bounds) || h.Counts[len(h.Counts)-1] > h.Count || h.Sum <= 0 {
			t.Errorf("connector %d: probe histogram %+v", i+1, h)
		}
		if cs.Routes == 0 || cs.RoutesVersion == 0 {
			t.Errorf("connector %d: %d routes, version %d", i+1, cs.Routes, cs.RoutesVersion)
		}
		if cs.FlowsTotal == 1 {
			used = &st.Connectors[i]
		}
	}
	if used == nil || used.FlowsOpen != 1 || st.Connectors[0].FlowsTotal+st.Connectors[1].FlowsTotal != 1 {
		t.Fatalf("flows: %+v; want one open flow through one connector", st.Connectors)
	}
	if st.Routes.Version == 0 || !slices.Contains(st.Routes.Domains, "app.example.com") || len(st.Routes.Prefixes) == 0 {
		t.Errorf("routes: %+v", st.Routes)
	}
	count := func(st client.Status, route, result string) uint64 {
		for _, d := range st.DNS {
			if d.Route == route && d.Result == result {
				return d.Questions
			}
		}
		t.Fatalf("no DNS count for %s/%s", route, result)
		return 0
	}
	if n := count(st, "tunnel", "noerror"); n == 0 {
		t.Error("no question answered through a connector")
	}
	if n := count(st, "host", "noerror"); n == 0 {
		t.Error("no question answered by the host's resolvers")
	}
	if _, err := s.client.Resolver().LookupHost(context.Background(), "broken.test"); err == nil {
		t.Error("broken.test resolved")
	}
	if n := count(s.client.Status(), "host", "servfail"); n == 0 {
		t.Error("the host's SERVFAIL was not counted")
	}

	// The used connector goes away: its flow is reset and it is down.
	down := used.PublicKey
	for _, tc := range s.connectors {
		if tc.key.PublicKey().String() == down {
			tc.conn.Close()
		}
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("the flow through the dead connector still reads")
	}
	netstacktest.WaitFor(t, func() bool {
		for _, cs := range s.client.Status().Connectors {
			if cs.PublicKey == down {
				return cs.State == client.StateDown
			}
		}
		return false
	})
	for _, cs := range s.client.Status().Connectors {
		switch {
		case cs.PublicKey == down && (cs.Failovers != 1 || cs.FlowsOpen != 0):
			t.Errorf("dead connector: failovers %d, open flows %d; want 1, 0", cs.Failovers, cs.FlowsOpen)
		case cs.PublicKey != down && cs.State != client.StateUp:
			t.Errorf("the other connector is %s", cs.State)
		}
	}
}
