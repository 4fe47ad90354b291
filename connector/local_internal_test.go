package connector

import (
	"net"
	"net/netip"
	"testing"
)

func TestHostHasAddr(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want bool
	}{
		{"127.0.0.1", true},
		{"127.3.4.5", true}, // all of 127/8 is the host's
		{"0.0.0.0", false},
		{"224.0.0.1", false},
		{"192.0.2.200", false}, // TEST-NET-1: no host has it
		{"::ffff:127.0.0.1", true},
	} {
		if got := hostHasAddr(netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("hostHasAddr(%s) = %v, want %v", tc.addr, got, tc.want)
		}
	}
	if ln, err := net.Listen("tcp", "[::1]:0"); err == nil {
		ln.Close()
		if !hostHasAddr(netip.IPv6Loopback()) {
			t.Error("hostHasAddr(::1) = false")
		}
	}
	// The fallback agrees where it can tell (it cannot for 127.3.4.5: the
	// kernel picks 127.0.0.1 as the source there).
	for _, a := range []string{"127.0.0.1", "192.0.2.200"} {
		if got, want := sourceIsSelf(netip.MustParseAddr(a)), hostHasAddr(netip.MustParseAddr(a)); got != want {
			t.Errorf("sourceIsSelf(%s) = %v, hostHasAddr %v", a, got, want)
		}
	}
	if netlinkBroken.Load() {
		t.Log("netlink route requests failed here; the fallback answered")
	}
	// Every address the interfaces list is the host's.
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Skip(err)
	}
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err != nil || p.Addr().IsLinkLocalUnicast() {
			continue
		}
		if !hostHasAddr(p.Addr()) {
			t.Errorf("hostHasAddr(%v) = false for an interface address", p.Addr())
		}
	}
}

// BenchmarkHostHasAddr is the cost the check adds to each new flow to an
// address outside loopback.
func BenchmarkHostHasAddr(b *testing.B) {
	a := netip.MustParseAddr("192.0.2.200")
	for b.Loop() {
		hostHasAddr(a)
	}
}

func BenchmarkSourceIsSelf(b *testing.B) {
	a := netip.MustParseAddr("192.0.2.200")
	for b.Loop() {
		sourceIsSelf(a)
	}
}
