package connector_test

import (
	"crypto/rand"
	"encoding/binary"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// TestHandshakeFloodCreatesNoState sends the connector's WireGuard port
// 80,000 datagrams a stranger could send: random bytes of every size, and
// handshake initiations of the right type and length whose MAC1 (keyed by
// the connector's public key, which the sender does not prove to know) is
// wrong. None may reach the tunnel, start goroutines or hold memory; the
// legitimate peer then connects and moves data as usual.
func TestHandshakeFloodCreatesNoState(t *testing.T) {
	netstacktest.CheckLeaks(t)
	logs := &logCounter{}
	e := newEnvWith(t, connector.Config{Logger: slog.New(logs)}, testPolicy)
	wgAddr := net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), e.conn.Port()))
	flood, err := net.DialUDP("udp", nil, wgAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer flood.Close()

	const each = 10000
	msg := make([]byte, 1500)
	sendFlood := func(rounds int) {
		for i := range rounds * each {
			// Random junk, 1 to 1,500 bytes (some start with a valid
			// message type by chance).
			rand.Read(msg)
			flood.Write(msg[:1+i%len(msg)])
			// An initiation: type 1, three reserved zero bytes, 144 more.
			init := msg[:148]
			rand.Read(init)
			binary.LittleEndian.PutUint32(init, 1)
			flood.Write(init)
			if i%500 == 0 {
				time.Sleep(time.Millisecond) // let the connector keep up
			}
		}
		time.Sleep(200 * time.Millisecond) // let what was queued drain
	}
	liveHeap := func() int64 {
		// Two collections: sync.Pool keeps freed buffers through one.
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return int64(m.HeapAlloc)
	}
	statsBefore := e.conn.Stats()

	// The first flood warms WireGuard's buffer pools and queues (bounded
	// by their sizes); a second one, three times larger, must add nothing
	// that grows with it: less than 4 MiB for 60,000 datagrams is under
	// 70 bytes each, and the noise of buffers in flight at the moment of
	// measuring.
	sendFlood(1)
	heap, goroutines := liveHeap(), runtime.NumGoroutine()
	sendFlood(3)
	if grew := liveHeap() - heap; grew > 4<<20 {
		t.Errorf("live heap grew %d KiB during a second flood of %d datagrams", grew>>10, 6*each)
	}
	if n := runtime.NumGoroutine(); n > goroutines+2 {
		t.Errorf("%d goroutines after the second flood, %d before it", n, goroutines)
	}
	st := e.conn.Stats()
	if st.Tun.InboundPackets != statsBefore.Tun.InboundPackets || st.Tun.InboundDropped != statsBefore.Tun.InboundDropped {
		t.Errorf("%d packets reached the tunnel from the flood", st.Tun.InboundPackets+st.Tun.InboundDropped-statsBefore.Tun.InboundPackets-statsBefore.Tun.InboundDropped)
	}

	// wireguard-go saw the initiations and logged them, rate-limited.
	if n := logs.count("invalid mac1"); n < 1 || n > 200 {
		t.Errorf("%d log lines about invalid MAC1 for %d initiations; want some, rate-limited", n, 4*each)
	}

	up := netstacktest.TCPEcho(t, "127.0.0.1:0")
	c, err := e.client.DialContext(ctxTimeout(t, 10*time.Second), "tcp", up.String())
	if err != nil {
		t.Fatalf("legitimate peer after the flood: %v", err)
	}
	defer c.Close()
	netstacktest.EchoTCP(t, c, 1<<20)
}
