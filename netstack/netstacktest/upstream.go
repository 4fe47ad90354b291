package netstacktest

import (
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
)

// TCPEcho serves TCP echo on addr (such as "127.0.0.1:0" or "[::1]:0")
// until the test ends: each connection's input is copied back, and when
// the input ends the server half-closes, then waits for the client to
// close. It skips the test if addr cannot be bound (no IPv6, say).
func TCPEcho(tb testing.TB, addr string) netip.AddrPort {
	tb.Helper()
	return ServeTCP(tb, addr, func(c net.Conn) {
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, c)
	})
}

// ServeTCP serves each connection to addr with serve on a goroutine of
// its own, closing the connection when serve returns, until the test
// ends. It skips the test if addr cannot be bound.
func ServeTCP(tb testing.TB, addr string, serve func(net.Conn)) netip.AddrPort {
	tb.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		tb.Skipf("listen %s: %v", addr, err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				serve(c)
			}()
		}
	}()
	tb.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// UDPEchoServer echoes UDP datagrams and counts them.
type UDPEchoServer struct {
	Addr netip.AddrPort
	// Received counts datagrams received.
	Received atomic.Int64

	mu   sync.Mutex
	seen map[string]int
}

// Seen returns how many datagrams with exactly this payload arrived.
func (s *UDPEchoServer) Seen(payload string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[payload]
}

// UDPEcho serves UDP echo on addr until the test ends. It skips the test if
// addr cannot be bound.
func UDPEcho(tb testing.TB, addr string) *UDPEchoServer {
	tb.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		tb.Skipf("listen %s: %v", addr, err)
	}
	s := &UDPEchoServer{Addr: pc.LocalAddr().(*net.UDPAddr).AddrPort(), seen: make(map[string]int)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			s.Received.Add(1)
			if n <= 64 {
				s.mu.Lock()
				s.seen[string(buf[:n])]++
				s.mu.Unlock()
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	tb.Cleanup(func() { pc.Close(); <-done })
	return s
}

// ClosedPort returns an address on host (an IP literal) where nothing
// listens for network ("tcp" or "udp"): it binds a free port and releases
// it.
func ClosedPort(tb testing.TB, network, host string) netip.AddrPort {
	tb.Helper()
	var ap netip.AddrPort
	if network == "tcp" {
		ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			tb.Fatal(err)
		}
		ap = ln.Addr().(*net.TCPAddr).AddrPort()
		ln.Close()
	} else {
		pc, err := net.ListenPacket("udp", net.JoinHostPort(host, "0"))
		if err != nil {
			tb.Fatal(err)
		}
		ap = pc.LocalAddr().(*net.UDPAddr).AddrPort()
		pc.Close()
	}
	return ap
}

// ListenUDPTCP opens a UDP socket and a TCP listener on the same free
// port of 127.0.0.1 (as a DNS server needs), retrying when another socket
// holds the TCP side of the port. Both are closed when the test ends.
func ListenUDPTCP(tb testing.TB) (net.PacketConn, net.Listener) {
	tb.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			pc.Close()
			continue
		}
		tb.Cleanup(func() { pc.Close(); ln.Close() })
		return pc, ln
	}
	tb.Fatal("no port free for both UDP and TCP")
	return nil, nil
}
