package netstack

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/appconnector/appconnector/tun"
)

// TestSourcePortReuseAfterUpstreamClose: the upstream closes first, so the
// gateway's side of the forwarded flow ends in TIME-WAIT; a peer that
// reuses the same source port right away (as Linux does when it was the
// passive closer) must get through, not time out.
func TestSourcePortReuseAfterUpstreamClose(t *testing.T) {
	gwTun, _ := tun.New(tun.Config{})
	clTun, _ := tun.New(tun.Config{})
	gw, err := New(gwTun, Config{Addresses: []netip.Prefix{netip.MustParsePrefix("10.5.0.1/32")},
		Allow: func(f Flow) bool { return f.Dst.Addr().IsLoopback() }})
	if err != nil {
		t.Fatal(err)
	}
	cl, err := New(clTun, Config{Addresses: []netip.Prefix{netip.MustParsePrefix("10.5.0.2/32")}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	pipe := func(from, to *tun.Device) {
		defer wg.Done()
		bufs, sizes := [][]byte{make([]byte, 65535)}, []int{0}
		for {
			if _, err := from.Read(bufs, sizes, 0); err != nil {
				return
			}
			if _, err := to.Write([][]byte{bufs[0][:sizes[0]]}, 0); err == os.ErrClosed {
				return
			}
		}
	}
	wg.Add(2)
	go pipe(gwTun, clTun)
	go pipe(clTun, gwTun)
	defer func() { cl.Close(); gw.Close(); gwTun.Close(); clTun.Close(); wg.Wait() }()

	// The upstream answers one byte and closes first.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("!"))
			c.Close()
		}
	}()
	up := ln.Addr().(*net.TCPAddr).AddrPort()
	local := tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom4([4]byte{10, 5, 0, 2}), Port: 40123}
	remote := tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom4(up.Addr().As4()), Port: up.Port()}
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := gonet.DialTCPWithBind(ctx, cl.stack, local, remote, header.IPv4ProtocolNumber)
		cancel()
		if err != nil {
			t.Fatalf("connection %d from the same source port: %v", i+1, err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if b, err := io.ReadAll(c); err != nil || string(b) != "!" {
			t.Fatalf("connection %d: %q %v", i+1, b, err)
		}
		c.Close()
		// Let the client side finish closing before it reuses the port.
		time.Sleep(50 * time.Millisecond)
	}
}
