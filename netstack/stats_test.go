package netstack

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// TestStatsDoesNotWalkEndpoints: Stats is polled (Connector.Shutdown every
// 20 ms while draining, metrics, tests every 10 ms) and must not touch the
// stack's endpoints. It used to count them with gVisor's
// RegisteredEndpoints, which walks every endpoint holding the stack-wide
// lock exclusively, and every segment the stack sends takes that lock: with
// 10,000 flows one call held it ~20 ms (~140 ms under the race detector),
// so a 10 ms poll stalled the gateway while 10,000 flows were closing and
// the packets queued towards it overflowed (TestTenThousandFlows). The
// walk allocates the list it returns, so a Stats without the walk
// allocates nothing, however many connections are open.
func TestStatsDoesNotWalkEndpoints(t *testing.T) {
	netstacktest.CheckLeaks(t)
	const flows = 200

	gw, cl := joinedStacks(t,
		Config{Addresses: []netip.Prefix{netip.MustParsePrefix("10.5.0.1/32")}, Allow: func(f Flow) bool { return f.Dst.Addr().IsLoopback() }},
		Config{Addresses: []netip.Prefix{netip.MustParsePrefix("10.5.0.2/32")}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, flows)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	defer func() {
		ln.Close()
		for c := range accepted {
			c.Close()
		}
	}()
	for range flows {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := cl.DialContext(ctx, "tcp", ln.Addr().String())
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	if n := gw.Endpoints(); n < flows {
		t.Fatalf("gateway has %d endpoints with %d flows open", n, flows)
	}
	if allocs := testing.AllocsPerRun(10, func() { gw.Stats() }); allocs != 0 {
		t.Errorf("Stats with %d connections open: %v allocations per call, want 0 (it walks the endpoints)", flows, allocs)
	}
}
