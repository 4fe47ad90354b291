package wireguard

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/appconnector/appconnector/netstack/netstacktest"
	"golang.zx2c4.com/wireguard/conn"
)

func TestSendReceiveBatch(t *testing.T) {
	netstacktest.CheckLeaks(t)
	for _, addr := range []string{"127.0.0.1", "::1"} {
		t.Run(addr, func(t *testing.T) {
			a, _ := NewBind(netip.MustParseAddr(addr))
			b, _ := NewBind(netip.MustParseAddr(addr))
			_, _, err := a.Open(0)
			if err != nil {
				t.Skipf("open %s: %v", addr, err)
			}
			defer a.Close()
			fns, portB, err := b.Open(0)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if len(fns) != 1 || portB == 0 {
				t.Fatalf("Open = %d fns, port %d", len(fns), portB)
			}
			ep, err := a.ParseEndpoint(netip.AddrPortFrom(netip.MustParseAddr(addr), portB).String())
			if err != nil {
				t.Fatal(err)
			}
			const total = 300 // more than one batch
			msgs := make([][]byte, total)
			for i := range msgs {
				msgs[i] = []byte(fmt.Sprintf("datagram %d", i))
			}
			bufs := make([][]byte, b.BatchSize())
			for i := range bufs {
				bufs[i] = make([]byte, 1500)
			}
			sizes := make([]int, len(bufs))
			eps := make([]conn.Endpoint, len(bufs))
			// Send one batch at a time and read it back, so the socket
			// buffer never overflows.
			got := 0
			for got < total {
				if got%a.BatchSize() == 0 {
					if err := a.Send(msgs[got:min(got+a.BatchSize(), total)], ep); err != nil {
						t.Fatal(err)
					}
					b.uc.SetReadDeadline(time.Now().Add(5 * time.Second))
				}
				n, err := fns[0](bufs[:min(len(bufs), a.BatchSize()-got%a.BatchSize())], sizes, eps)
				if err != nil {
					t.Fatal(err)
				}
				for i := range n {
					if want := fmt.Sprintf("datagram %d", got+i); string(bufs[i][:sizes[i]]) != want {
						t.Fatalf("got %q, want %q", bufs[i][:sizes[i]], want)
					}
					if eps[i].DstIP() != netip.MustParseAddr(addr) {
						t.Fatalf("source %v", eps[i].DstToString())
					}
				}
				got += n
			}
			b.Close()
			if _, err := fns[0](bufs, sizes, eps); !errors.Is(err, net.ErrClosed) {
				t.Errorf("receive after Close: %v, want net.ErrClosed", err)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	if _, err := NewBind(netip.Addr{}); err == nil {
		t.Error("New with no address succeeded")
	}
	b, _ := NewBind(netip.MustParseAddr("127.0.0.1"))
	if _, err := b.ParseEndpoint("example.com:51820"); err == nil {
		t.Error("ParseEndpoint accepted a host name")
	}
	ep6, _ := b.ParseEndpoint("[::1]:51820")
	if err := b.Send([][]byte{{1}}, ep6); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Send before Open: %v, want net.ErrClosed", err)
	}
	if _, _, err := b.Open(0); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, _, err := b.Open(0); !errors.Is(err, conn.ErrBindAlreadyOpen) {
		t.Errorf("second Open: %v", err)
	}
	if err := b.Send([][]byte{{1}}, ep6); err == nil {
		t.Error("sending to IPv6 from an IPv4 bind succeeded")
	}
	// Mapped IPv4 endpoints are plain IPv4.
	ep, err := b.ParseEndpoint("[::ffff:127.0.0.1]:9")
	if err != nil || !ep.DstIP().Is4() {
		t.Errorf("mapped endpoint = %v, %v", ep, err)
	}
}

// TestOffloadRuns sends runs of equal-sized datagrams (which go as
// segmented sends and may come back coalesced) mixed with shorter ones,
// and checks every datagram arrives once, intact and in order.
func TestOffloadRuns(t *testing.T) {
	netstacktest.CheckLeaks(t)
	a, _ := NewBind(netip.MustParseAddr("127.0.0.1"))
	b, _ := NewBind(netip.MustParseAddr("127.0.0.1"))
	if _, _, err := a.Open(0); err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	fns, port, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	t.Logf("offload: tx %v rx %v", a.txOffload.Load(), b.rxOffload.Load())
	ep, _ := a.ParseEndpoint(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String())
	var want [][]byte
	for i := range a.BatchSize() {
		size := 1400
		if i%37 == 36 {
			size = 60 + i // a shorter one ends a run
		}
		d := make([]byte, size)
		for j := range d {
			d[j] = byte(i + j)
		}
		want = append(want, d)
	}
	if err := a.Send(want, ep); err != nil {
		t.Fatal(err)
	}
	bufs := make([][]byte, b.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, 65535)
	}
	sizes := make([]int, len(bufs))
	eps := make([]conn.Endpoint, len(bufs))
	b.uc.SetReadDeadline(time.Now().Add(5 * time.Second))
	var got [][]byte
	for len(got) < len(want) {
		n, err := fns[0](bufs, sizes, eps)
		if err != nil {
			t.Fatalf("after %d datagrams: %v", len(got), err)
		}
		for i := range n {
			got = append(got, append([]byte(nil), bufs[i][:sizes[i]]...))
		}
	}
	for i := range want {
		if string(got[i]) != string(want[i]) {
			t.Fatalf("datagram %d: %d bytes, want %d (or different content)", i, len(got[i]), len(want[i]))
		}
	}
}
