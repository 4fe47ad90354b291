package connector_test

import (
	"context"
	"errors"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/dnstest"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// An address the host gains after the connector started is the host's
// all the same (issue 11, finding 5): a DNS answer naming it is not
// learned, and a broad configured route does not reach it; a route naming
// exactly it does. Runs in its own network namespace, whose loopback gets
// the addresses.
func TestHostAddressAddedAfterStart(t *testing.T) {
	if !netstacktest.InNetns(t, false) {
		return
	}
	ip, err := exec.LookPath("ip")
	if err != nil {
		t.Skip("ip (iproute2) is not installed")
	}
	netstacktest.CheckLeaks(t)
	up := dnstest.New(t, "svc.example. 60 IN A 192.0.2.77")
	e := newEnvWith(t, connector.Config{DNSUpstreams: []string{up.Addr}}, `[
		{"name": "web", "connectors": ["*"], "domains": ["svc.example"]},
		{"name": "net", "connectors": ["*"], "routes": ["198.51.100.0/24", "198.51.100.8/32"]}]`)
	// A service on the host's wildcard address, as the finding had.
	echo := netstacktest.TCPEcho(t, "0.0.0.0:0")
	for _, a := range []string{"192.0.2.77/32", "198.51.100.7/32", "198.51.100.8/32"} {
		if out, err := exec.Command(ip, "addr", "add", a, "dev", "lo").CombinedOutput(); err != nil {
			t.Fatalf("ip addr add %s: %v: %s", a, err, out)
		}
	}
	// The test's dialer reaches loopback only; these are on this
	// namespace's loopback.
	e.dialer.AllowNamespaceLocal(netip.MustParseAddr("192.0.2.77"), netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("198.51.100.8"))
	dial := func(a string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := e.client.DialContext(ctx, "tcp", netip.AddrPortFrom(netip.MustParseAddr(a), echo.Port()).String())
		if err == nil {
			c.Close()
		} else if errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("dial %s: no answer within 2 s", a)
		}
		return err
	}

	if r := query(t, e, "svc.example.", dns.TypeA, false); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("svc.example: %v", r)
	}
	for _, r := range e.conn.Routes() {
		if r.Source != "configured" {
			t.Errorf("the host's new address was learned: %+v", r)
		}
	}
	if dial("192.0.2.77") == nil {
		t.Error("the host's new address, from a DNS answer, reached its wildcard service")
	}
	if dial("198.51.100.7") == nil {
		t.Error("the host's new address inside a broad configured route reached its wildcard service")
	}
	if err := dial("198.51.100.8"); err != nil {
		t.Errorf("the host's new address named exactly by a route: %v", err)
	}
	if n := e.dialer.Dials.Load(); n != 1 {
		t.Errorf("host dials = %d, want 1 (the exact route only)", n)
	}
	if n := e.conn.Stats().Routes.LocalRefused; n != 1 {
		t.Errorf("flows refused as the host's = %d, want 1", n)
	}
}
