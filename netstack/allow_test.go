package netstack

import (
	"net/netip"
	"testing"

	"github.com/appconnector/appconnector/tun"
)

// A policy that allows everything still never forwards to these: a real
// client stack would not even send most of them, so check allow directly.
func TestNeverForwarded(t *testing.T) {
	dev, err := tun.New(tun.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	own := netip.MustParsePrefix("10.1.0.1/24")
	s, err := New(dev, Config{Addresses: []netip.Prefix{own}, Allow: func(Flow) bool { return true }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	src := netip.MustParseAddrPort("10.1.0.2:5000")
	for _, dst := range []string{"0.0.0.0", "::", "::ffff:127.0.0.1", "::ffff:192.0.2.1", "224.0.0.1", "ff02::1", "255.255.255.255", "10.1.0.1"} {
		for _, proto := range []Proto{TCP, UDP, ICMP} {
			f := Flow{Proto: proto, Src: src, Dst: netip.AddrPortFrom(netip.MustParseAddr(dst), 80)}
			if s.allow(f) {
				t.Errorf("%v allowed", f)
			}
		}
	}
	if f := (Flow{Proto: UDP, Src: src, Dst: netip.MustParseAddrPort("192.0.2.1:53")}); !s.allow(f) {
		t.Errorf("%v refused", f)
	}
}
