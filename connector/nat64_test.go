package connector_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// Under a configured route 64:ff9b::/96 (the IPv4 internet through NAT64),
// the NAT64 forms of the host's loopback and of the metadata address are
// refused without a host dial (issue 11, finding 9).
func TestNAT64FormsOfProtectedRangesRefused(t *testing.T) {
	netstacktest.CheckLeaks(t)
	e := newEnvWith(t, connector.Config{}, `[{"name": "nat64", "connectors": ["*"], "routes": ["64:ff9b::/96"]}]`)
	for _, dst := range []string{"[64:ff9b::7f00:1]:80", "[64:ff9b::a9fe:a9fe]:80", "[64:ff9b::a00:1]:22"} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := e.client.DialContext(ctx, "tcp", dst)
		cancel()
		if err == nil {
			c.Close()
			t.Fatalf("%s: connected", dst)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%s: no reset within 2 s: %v", dst, err)
		}
	}
	if n := e.dialer.Dials.Load(); n != 0 {
		t.Errorf("host dials = %d, want 0", n)
	}
}
