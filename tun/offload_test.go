package tun

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/appconnector/appconnector/netstack/netstacktest"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// wire is two gVisor stacks, each on a Device, with the devices' packets
// pumped to each other the way two WireGuard peers would carry them.
type wire struct {
	a, b   *stack.Stack
	da, db *Device
	wg     sync.WaitGroup
	// oversize counts packets Read returned that were larger than the MTU.
	oversize atomic.Int64
}

const (
	wireA4 = "\x0a\x00\x00\x01"
	wireB4 = "\x0a\x00\x00\x02"
	wireA6 = "\xfd\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01"
	wireB6 = "\xfd\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02"
)

func newWire(t *testing.T, cfg Config) *wire {
	t.Helper()
	w := &wire{}
	var err error
	if w.da, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	if w.db, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	w.a = wireStack(t, w.da, wireA4, wireA6)
	w.b = wireStack(t, w.db, wireB4, wireB6)
	w.wg.Add(2)
	go w.pump(w.da, w.db)
	go w.pump(w.db, w.da)
	t.Cleanup(func() {
		w.a.Close()
		w.b.Close()
		w.da.Close()
		w.db.Close()
		w.wg.Wait()
		w.a.Wait()
		w.b.Wait()
	})
	return w
}

func wireStack(t *testing.T, d *Device, a4, a6 string) *stack.Stack {
	t.Helper()
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	if err := s.CreateNIC(1, d.LinkEndpoint()); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{a4, a6} {
		proto := ipv4.ProtocolNumber
		if len(a) == 16 {
			proto = ipv6.ProtocolNumber
		}
		addr := tcpip.AddrFromSlice([]byte(a))
		if err := s.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: addr.WithPrefix()}, stack.AddressProperties{}); err != nil {
			t.Fatal(err)
		}
	}
	s.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: 1},
		{Destination: header.IPv6EmptySubnet, NIC: 1},
	})
	return s
}

// pump moves packets from one device to the other in batches, as
// wireguard-go does, until either closes.
func (w *wire) pump(from, to *Device) {
	defer w.wg.Done()
	bufs, sizes := readBufs(from.BatchSize(), 1<<16)
	const offset = 16
	for {
		n, err := from.Read(bufs, sizes, offset)
		if err != nil {
			return
		}
		out := make([][]byte, n)
		for i := range n {
			if sizes[i] > from.mtu {
				w.oversize.Add(1)
			}
			out[i] = bufs[i][:offset+sizes[i]]
		}
		if _, err := to.Write(out, offset); errors.Is(err, os.ErrClosed) {
			return
		}
	}
}

// TestOffloadTransfer moves data both ways between two stacks through
// Devices, with and without offload, over IPv4 and IPv6, and checks that
// it arrives intact, that no segment was larger than the MTU, and that
// nothing was dropped.
func TestOffloadTransfer(t *testing.T) {
	netstacktest.CheckLeaks(t)
	for _, tc := range []struct {
		name      string
		noOffload bool
		addr      string
		proto     tcpip.NetworkProtocolNumber
	}{
		{"offload-ipv4", false, wireB4, ipv4.ProtocolNumber},
		{"offload-ipv6", false, wireB6, ipv6.ProtocolNumber},
		{"plain-ipv4", true, wireB4, ipv4.ProtocolNumber},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWire(t, Config{NoOffload: tc.noOffload})
			full := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFromSlice([]byte(tc.addr)), Port: 80}
			ln, err := gonet.ListenTCP(w.b, full, tc.proto)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			// The server echoes everything back.
			done := make(chan error, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					done <- err
					return
				}
				defer c.Close()
				_, err = io.Copy(c, c)
				done <- err
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := gonet.DialContextTCP(ctx, w.a, full, tc.proto)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			data := make([]byte, 4<<20)
			for i := range data {
				data[i] = byte(rand.IntN(256))
			}
			go func() {
				c.Write(data)
				c.CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("echoed %d bytes, differing from the %d sent", len(got), len(data))
			}
			if err := <-done; err != nil && !errors.Is(err, net.ErrClosed) {
				t.Fatal(err)
			}
			if n := w.oversize.Load(); n != 0 {
				t.Errorf("%d packets larger than the MTU left a device", n)
			}
			for _, d := range []*Device{w.da, w.db} {
				if st := d.Stats(); st.OutboundDropped != 0 || st.InboundDropped != 0 {
					t.Errorf("stats = %+v, want no drops", st)
				}
			}
			for _, s := range []*stack.Stack{w.a, w.b} {
				st := s.Stats()
				if n := st.TCP.ChecksumErrors.Value() + st.IP.MalformedPacketsReceived.Value(); n != 0 {
					t.Errorf("%d checksum errors or malformed packets", n)
				}
			}
		})
	}
}

// countingDispatcher records what a Device delivers to the stack.
type countingDispatcher struct {
	mu      sync.Mutex
	packets int
	payload int
}

func (c *countingDispatcher) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.packets++
	c.payload += pkt.Data().Size() - header.IPv4MinimumSize - header.TCPMinimumSize
}

func (c *countingDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// tcpSegment builds a checksummed IPv4 TCP segment.
func tcpSegment(srcPort uint16, seq uint32, payload []byte) []byte {
	b := make([]byte, header.IPv4MinimumSize+header.TCPMinimumSize+len(payload))
	src, dst := tcpip.AddrFromSlice([]byte(wireA4)), tcpip.AddrFromSlice([]byte(wireB4))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: src, DstAddr: dst})
	ip.SetChecksum(^ip.CalculateChecksum())
	tcp := header.TCP(b[header.IPv4MinimumSize:])
	tcp.Encode(&header.TCPFields{SrcPort: srcPort, DstPort: 80, SeqNum: seq, AckNum: 1, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagAck, WindowSize: 65535})
	copy(tcp.Payload(), payload)
	sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(tcp)))
	tcp.SetChecksum(^checksum.Checksum(tcp, sum))
	return b
}

// TestWriteCoalescesAndDeliversEverything writes in-order segments of many
// flows in one batch: every byte must reach the stack by the time Write
// returns, joined into one packet per flow.
func TestWriteCoalescesAndDeliversEverything(t *testing.T) {
	d, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var disp countingDispatcher
	d.LinkEndpoint().Attach(&disp)
	const flows, segs, size = 40, 3, 1000
	var bufs [][]byte
	for s := range segs {
		for f := range flows {
			bufs = append(bufs, tcpSegment(uint16(1000+f), uint32(s*size), bytes.Repeat([]byte{byte(f)}, size)))
		}
	}
	if _, err := d.Write(bufs, 0); err != nil {
		t.Fatal(err)
	}
	disp.mu.Lock()
	defer disp.mu.Unlock()
	if disp.payload != flows*segs*size {
		t.Fatalf("stack got %d payload bytes, want %d", disp.payload, flows*segs*size)
	}
	if disp.packets != flows {
		t.Errorf("stack got %d packets, want one per flow (%d)", disp.packets, flows)
	}
}
