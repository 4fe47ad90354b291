package tun

import (
	"bytes"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/appconnector/appconnector/netstack/netstacktest"
	wgtun "golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

func packet(i int, size int) []byte {
	b := bytes.Repeat([]byte{byte(i)}, size)
	b[0] = 0x45 // IPv4, so Write accepts it
	return b
}

// send queues packets as the stack would and returns the WritePackets
// result.
func send(t *testing.T, d *Device, pkts ...[]byte) (int, tcpip.Error) {
	t.Helper()
	var l stack.PacketBufferList
	for _, p := range pkts {
		l.PushBack(stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(p)}))
	}
	n, err := d.LinkEndpoint().WritePackets(l)
	l.DecRef() // the caller's references; the device holds its own
	return n, err
}

func readBufs(n, size int) ([][]byte, []int) {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, size)
	}
	return bufs, make([]int, n)
}

func TestReadBatches(t *testing.T) {
	netstacktest.CheckLeaks(t)
	d, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.BatchSize() <= 1 {
		t.Fatalf("BatchSize = %d, want > 1", d.BatchSize())
	}
	const total = 200
	for i := range total {
		if n, err := send(t, d, packet(i, 100)); n != 1 || err != nil {
			t.Fatalf("WritePackets = %d, %v", n, err)
		}
	}
	const offset = 16 // wireguard-go reads at an offset
	bufs, sizes := readBufs(d.BatchSize(), 2000)
	got := 0
	for got < total {
		n, err := d.Read(bufs, sizes, offset)
		if err != nil {
			t.Fatal(err)
		}
		if want := min(total-got, d.BatchSize()); n != want {
			t.Fatalf("Read returned %d packets, want %d", n, want)
		}
		for i := range n {
			if want := packet(got+i, 100); !bytes.Equal(bufs[i][offset:offset+sizes[i]], want) {
				t.Fatalf("packet %d: wrong contents or order", got+i)
			}
		}
		got += n
	}
	if st := d.Stats(); st.OutboundPackets != total || st.OutboundDropped != 0 {
		t.Errorf("stats = %+v", st)
	}
}

func TestBackpressureNoDrops(t *testing.T) {
	netstacktest.CheckLeaks(t)
	d, err := New(Config{QueueLen: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	const total = 50
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range total {
			if n, err := send(t, d, packet(i, 60)); n != 1 || err != nil {
				t.Errorf("WritePackets = %d, %v", n, err)
				return
			}
		}
	}()
	// Wait until the writer is blocked on the full queue.
	for d.Stats().OutboundBlocked == 0 {
		select {
		case <-done:
			t.Fatal("writer finished without blocking on a queue of 2")
		case <-time.After(time.Millisecond):
		}
	}
	bufs, sizes := readBufs(8, 1500)
	for got := 0; got < total; {
		n, err := d.Read(bufs, sizes, 0)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if bufs[i][1] != byte(got+i) {
				t.Fatalf("packet %d out of order", got+i)
			}
		}
		got += n
	}
	<-done
	if st := d.Stats(); st.OutboundDropped != 0 || st.OutboundPackets != total {
		t.Errorf("stats = %+v, want %d packets and no drops", st, total)
	}
}

func TestCloseUnblocksEverything(t *testing.T) {
	netstacktest.CheckLeaks(t)
	d, err := New(Config{QueueLen: 1})
	if err != nil {
		t.Fatal(err)
	}
	if ev := <-d.Events(); ev != wgtun.EventUp {
		t.Fatalf("first event = %v, want EventUp", ev)
	}
	send(t, d, packet(0, 60))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // blocks: the queue is full
		defer wg.Done()
		if n, err := send(t, d, packet(1, 60)); n != 0 || err == nil {
			t.Errorf("WritePackets after Close = %d, %v; want an error", n, err)
		}
	}()
	for d.Stats().OutboundBlocked == 0 {
		time.Sleep(time.Millisecond)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	bufs, sizes := readBufs(1, 1500)
	if _, err := d.Read(bufs, sizes, 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Read after Close: %v, want os.ErrClosed", err)
	}
	if _, err := d.Write([][]byte{packet(2, 60)}, 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Write after Close: %v, want os.ErrClosed", err)
	}
	if _, ok := <-d.Events(); ok {
		t.Error("Events not closed")
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if st := d.Stats(); st.OutboundDropped != 1 {
		t.Errorf("OutboundDropped = %d, want 1 (the packet queued at Close)", st.OutboundDropped)
	}
}

func TestReadWaitsWhenBlockedForReader(t *testing.T) {
	netstacktest.CheckLeaks(t)
	d, _ := New(Config{})
	defer d.Close()
	errc := make(chan error, 1)
	go func() {
		bufs, sizes := readBufs(4, 1500)
		_, err := d.Read(bufs, sizes, 0)
		errc <- err
	}()
	select {
	case err := <-errc:
		t.Fatalf("Read returned %v with nothing queued", err)
	case <-time.After(20 * time.Millisecond):
	}
	d.Close()
	if err := <-errc; !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Read: %v, want os.ErrClosed", err)
	}
}

func TestReadDropsOversizedPacket(t *testing.T) {
	netstacktest.CheckLeaks(t)
	d, _ := New(Config{})
	defer d.Close()
	send(t, d, packet(0, 1400), packet(1, 100))
	bufs, sizes := readBufs(4, 1000)
	n, err := d.Read(bufs, sizes, 0)
	if err != nil || n != 1 || sizes[0] != 100 {
		t.Fatalf("Read = %d, %v (size %d); want the small packet only", n, err, sizes[0])
	}
	if st := d.Stats(); st.OutboundDropped != 1 {
		t.Errorf("OutboundDropped = %d, want 1", st.OutboundDropped)
	}
}

type recordingDispatcher struct {
	mu     sync.Mutex
	protos []tcpip.NetworkProtocolNumber
	data   [][]byte
}

func (r *recordingDispatcher) DeliverNetworkPacket(p tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.protos = append(r.protos, p)
	r.data = append(r.data, pkt.ToView().AsSlice())
}

func (r *recordingDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

func TestWriteDelivers(t *testing.T) {
	netstacktest.CheckLeaks(t)
	d, _ := New(Config{})
	defer d.Close()
	rec := &recordingDispatcher{}

	v4 := append([]byte{0, 0, 0, 0}, packet(4, 40)...)
	v6 := append([]byte{0, 0, 0, 0}, 0x60, 1, 2, 3)
	bad := append([]byte{0, 0, 0, 0}, 0x20, 1, 2, 3)
	empty := []byte{0, 0, 0, 0}
	// Before Attach there is nowhere to deliver: counted, not lost silently.
	if _, err := d.Write([][]byte{v4}, 4); err != nil {
		t.Fatal(err)
	}
	if st := d.Stats(); st.InboundDropped != 1 {
		t.Fatalf("InboundDropped before attach = %d, want 1", st.InboundDropped)
	}
	d.LinkEndpoint().Attach(rec)
	n, err := d.Write([][]byte{v4, bad, empty, v6}, 4)
	if n != 4 || err == nil {
		t.Fatalf("Write = %d, %v; want 4 and an error for the bad version", n, err)
	}
	if len(rec.protos) != 2 || rec.protos[0] != 0x0800 || rec.protos[1] != 0x86dd {
		t.Fatalf("delivered protocols %v, want IPv4 then IPv6", rec.protos)
	}
	if !bytes.Equal(rec.data[0], v4[4:]) {
		t.Error("IPv4 packet contents changed")
	}
	if st := d.Stats(); st.InboundPackets != 2 || st.InboundDropped != 2 {
		t.Errorf("stats = %+v", st)
	}
}

func TestConfigValidation(t *testing.T) {
	for _, cfg := range []Config{{MTU: 100}, {MTU: 70000}, {QueueLen: -1}, {BatchSize: -3}} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
}
