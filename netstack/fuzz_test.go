package netstack_test

import (
	"net/netip"
	"os"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/appconnector/appconnector/netstack"
	"github.com/appconnector/appconnector/netstack/netstacktest"
	"github.com/appconnector/appconnector/tun"
)

// FuzzStackPackets writes arbitrary bytes into a forwarding stack through
// its tun device, as WireGuard would after decrypting a peer's packet.
// Nothing may panic, and the stack must still answer afterwards: a SYN
// to a destination the policy refuses gets a RST.
//
//	go test ./netstack -run X -fuzz FuzzStackPackets -fuzztime 60s
func FuzzStackPackets(f *testing.F) {
	dev, err := tun.New(tun.Config{})
	if err != nil {
		f.Fatal(err)
	}
	s, err := netstack.New(dev, netstack.Config{Addresses: []netip.Prefix{netip.MustParsePrefix("10.7.0.1/32"), netip.MustParsePrefix("fd07::1/128")},
		// Nothing is forwarded: the fuzzer must not make the test dial.
		Allow: func(netstack.Flow) bool { return false }})
	if err != nil {
		f.Fatal(err)
	}
	out := make(chan []byte, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		bufs, sizes := [][]byte{make([]byte, 65535)}, []int{0}
		for {
			if _, err := dev.Read(bufs, sizes, 0); err != nil {
				return
			}
			select {
			case out <- append([]byte(nil), bufs[0][:sizes[0]]...):
			default: // nobody is waiting for it
			}
		}
	}()
	f.Cleanup(func() { s.Close(); dev.Close(); <-done })

	peer := netip.MustParseAddrPort("10.7.0.2:40000")
	refused := netip.MustParseAddrPort("192.0.2.9:443")
	syn := synPacket(peer, refused)
	f.Add(syn)
	f.Add(synPacket(netip.MustParseAddrPort("[fd07::2]:40000"), netip.MustParseAddrPort("[2001:db8::9]:443")))
	f.Add(netstacktest.EchoRequest(peer.Addr(), refused.Addr(), 1, 1, []byte("ping")))
	f.Add(netstacktest.EchoRequest(netip.MustParseAddr("fd07::2"), netip.MustParseAddr("2001:db8::9"), 1, 1, nil))
	f.Add([]byte{0x45})
	f.Add([]byte{0x60, 0, 0, 0, 0, 8, 17, 64})

	f.Fuzz(func(t *testing.T, pkt []byte) {
		if _, err := dev.Write([][]byte{pkt}, 0); err == os.ErrClosed {
			t.Fatal(err)
		}
		// Still alive: a fresh SYN (new source port each time, so it is
		// never mistaken for a retransmission) is answered with a RST.
		for len(out) > 0 {
			<-out
		}
		port := uint16(1024 + time.Now().UnixNano()%60000)
		probe := synPacket(netip.AddrPortFrom(peer.Addr(), port), refused)
		if _, err := dev.Write([][]byte{probe}, 0); err != nil {
			t.Fatal(err)
		}
		deadline := time.After(5 * time.Second)
		for {
			select {
			case p := <-out:
				if len(p) >= header.IPv4MinimumSize+header.TCPMinimumSize && p[0]>>4 == 4 && p[9] == uint8(header.TCPProtocolNumber) {
					tcp := header.TCP(p[header.IPv4(p).HeaderLength():])
					if tcp.DestinationPort() == port && tcp.Flags().Contains(header.TCPFlagRst) {
						return
					}
				}
			case <-deadline:
				t.Fatal("no RST for a refused SYN after the input")
			}
		}
	})
}
