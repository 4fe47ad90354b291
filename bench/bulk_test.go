// Bulk transfer benchmarks (go test -bench): median of 5 runs of 256 MiB
// each:
//
//	go test ./bench -run X -bench Bulk -benchtime 1x -count 5

package main

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/apptype"
	"github.com/appconnector/appconnector/connector/wireguard"
	"github.com/appconnector/appconnector/connector/wireguard/wgtest"
)

const bulkBytes = 256 << 20

// serveSink accepts connections on ln; each reads to EOF, then answers with
// the byte count (8 bytes, big endian) and closes first, so TIME_WAIT stays
// on the server side.
func serveSink(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			n, _ := io.Copy(io.Discard, c)
			var b [8]byte
			binary.BigEndian.PutUint64(b[:], uint64(n))
			c.Write(b[:])
		}()
	}
}

// upload writes n bytes on c, half-closes and checks the sink's count.
func upload(b *testing.B, c net.Conn, n int) {
	buf := make([]byte, 64<<10)
	for sent := 0; sent < n; {
		m, err := c.Write(buf[:min(len(buf), n-sent)])
		if err != nil {
			b.Fatalf("write after %d bytes: %v", sent, err)
		}
		sent += m
	}
	c.(interface{ CloseWrite() error }).CloseWrite()
	var ack [8]byte
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		b.Fatalf("read ack: %v", err)
	}
	if got := binary.BigEndian.Uint64(ack[:]); got != uint64(n) {
		b.Fatalf("sink received %d bytes, want %d", got, n)
	}
}

func runBulk(b *testing.B, dial func() (net.Conn, error)) {
	b.SetBytes(bulkBytes)
	b.ResetTimer()
	for range b.N {
		c, err := dial()
		if err != nil {
			b.Fatal(err)
		}
		upload(b, c, bulkBytes)
		c.Close()
	}
}

// BenchmarkBulkDirect is plain loopback TCP: the physical reference.
func BenchmarkBulkDirect(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go serveSink(ln)
	runBulk(b, func() (net.Conn, error) { return net.Dial("tcp", ln.Addr().String()) })
}

// BenchmarkBulkConnector is client peer → WireGuard/UDP on 127.0.0.1 →
// Connector → host socket → sink on 127.0.0.1, all in this process.
func BenchmarkBulkConnector(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go serveSink(ln)

	serverKey, _ := wireguard.GeneratePrivateKey()
	clientKey, _ := wireguard.GeneratePrivateKey()
	policy, err := apptype.ParsePolicy("bench", []byte(`[{"name": "sink", "connectors": ["*"], "routes": ["127.0.0.1/32"]}]`))
	if err != nil {
		b.Fatal(err)
	}
	conn, err := connector.New(connector.Config{
		WireGuard: &wireguard.Config{
			Interface: wireguard.Interface{PrivateKey: serverKey, Addresses: []netip.Prefix{netip.MustParsePrefix("10.97.0.1/24")}},
			Peers:     []wireguard.Peer{{PublicKey: clientKey.PublicKey(), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.97.0.2/32")}}},
		},
		ListenAddr: loopback,
		Policy:     policy,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	client, err := wgtest.New(wgtest.Config{
		PrivateKey: clientKey,
		Addresses:  []netip.Prefix{netip.MustParsePrefix("10.97.0.2/32")},
		Remotes: []wireguard.Peer{{
			PublicKey:  serverKey.PublicKey(),
			Endpoint:   netip.AddrPortFrom(loopback, conn.Port()).String(),
			AllowedIPs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
		}},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	runBulk(b, func() (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return client.DialContext(ctx, "tcp", ln.Addr().String())
	})
}

// BenchmarkBulkStock is two wireguard-go devices on wireguard-go's stock
// tun/netstack, peered over 127.0.0.1, with the sink inside the server's
// stack (no forwarding): the starting point users would build from.
func BenchmarkBulkStock(b *testing.B) {
	serverAddr := netip.MustParseAddr("10.96.0.1")
	snet, cnet, closePair, err := stockPair(serverAddr, netip.MustParseAddr("10.96.0.2"))
	if err != nil {
		b.Fatal(err)
	}
	defer closePair()

	ln, err := snet.ListenTCPAddrPort(netip.AddrPortFrom(serverAddr, 5001))
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go serveSink(ln)
	runBulk(b, func() (net.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return cnet.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(serverAddr, 5001))
	})
}
