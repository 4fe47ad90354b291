package socks5

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector/proxy"
	"github.com/appconnector/appconnector/connector/proxy/proxytest"
	"github.com/appconnector/appconnector/netstack/netstacktest"
	xproxy "golang.org/x/net/proxy"
)

// pxUDPEcho starts a UDP echo server on 127.0.0.1 and returns its port
// and a function listing the payloads it received.
func pxUDPEcho(t testing.TB) (port uint16, received func() []string) {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		got []string
	)
	wg.Go(func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			mu.Lock()
			got = append(got, string(buf[:n]))
			mu.Unlock()
			pc.WriteToUDPAddrPort(buf[:n], from)
		}
	})
	t.Cleanup(func() {
		pc.Close()
		wg.Wait()
	})
	return uint16(pc.LocalAddr().(*net.UDPAddr).Port), func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
}

// startSOCKS serves s on a new loopback listener until the test ends.
func startSOCKS(t testing.TB, s *Server) string {
	t.Helper()
	if s.Dial == nil {
		s.Dial = proxytest.Dial
	}
	if s.Logf == nil {
		s.Logf = t.Logf
	}
	return proxytest.Serve(t, s.Serve, s.Close)
}

// socksAddrBytes encodes host:port as ATYP, DST.ADDR, DST.PORT.
func socksAddrBytes(host string, port uint16) []byte {
	var b []byte
	switch ip, err := netip.ParseAddr(host); {
	case err == nil && ip.Is4():
		b = append(append(b, socksAtypIPv4), ip.AsSlice()...)
	case err == nil && ip.Zone() == "":
		b = append(append(b, socksAtypIPv6), ip.AsSlice()...)
	default:
		b = socksDomainBytes(host)
	}
	return binary.BigEndian.AppendUint16(b, port)
}

// socksDomainBytes encodes name as ATYP 3 and DST.ADDR, whatever it is.
func socksDomainBytes(name string) []byte {
	return append([]byte{socksAtypDomain, byte(len(name))}, name...)
}

// socksDial connects to the proxy and does the greeting with methods,
// returning the chosen method.
func socksDial(t testing.TB, proxyAddr string, methods ...byte) (net.Conn, byte) {
	t.Helper()
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(append([]byte{5, byte(len(methods))}, methods...)); err != nil {
		t.Fatal(err)
	}
	var r [2]byte
	if _, err := io.ReadFull(c, r[:]); err != nil {
		t.Fatalf("read method: %v", err)
	}
	if r[0] != 5 {
		t.Fatalf("method reply version %d", r[0])
	}
	return c, r[1]
}

// socksRequest sends a request and reads the reply.
func socksRequest(t testing.TB, c net.Conn, cmd byte, addr []byte) (rep byte, bnd socksAddr) {
	t.Helper()
	if _, err := c.Write(append([]byte{5, cmd, 0}, addr...)); err != nil {
		t.Fatal(err)
	}
	return readSOCKSReply(t, c)
}

func readSOCKSReply(t testing.TB, c net.Conn) (rep byte, bnd socksAddr) {
	t.Helper()
	var h [4]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		t.Fatalf("read reply: %v", err)
	}
	if h[0] != 5 || h[2] != 0 {
		t.Fatalf("reply header %x", h)
	}
	bnd, err := readSOCKSAddr(c, h[3])
	if err != nil {
		t.Fatalf("read reply address: %v", err)
	}
	return h[1], bnd
}

// echoHalfClose writes msg, half-closes and expects msg back then EOF.
func echoHalfClose(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if string(got) != msg {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
}

func TestSOCKS5Connect(t *testing.T) {
	netstacktest.CheckLeaks(t)
	addr := startSOCKS(t, &Server{})
	echo4 := proxytest.TCPEcho(t, "tcp", "127.0.0.1:0")
	host4, port4 := proxytest.HostPort(t, echo4)
	tests := []struct {
		name string
		echo func(t *testing.T) (host string, port uint16)
	}{
		{"ipv4", func(*testing.T) (string, uint16) { return host4, port4 }},
		{"ipv6", func(t *testing.T) (string, uint16) {
			return proxytest.HostPort(t, proxytest.TCPEcho(t, "tcp6", "[::1]:0"))
		}},
		{"domain", func(*testing.T) (string, uint16) { return "app.test", port4 }},
		{"domain-ip-literal", func(*testing.T) (string, uint16) { return "127.0.0.1 as a name", port4 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host, port := tt.echo(t)
			dst := socksAddrBytes(host, port)
			if tt.name == "domain-ip-literal" {
				dst = binary.BigEndian.AppendUint16(socksDomainBytes("127.0.0.1"), port)
			}
			c, m := socksDial(t, addr, socksMethodNone)
			if m != socksMethodNone {
				t.Fatalf("method %#x", m)
			}
			rep, bnd := socksRequest(t, c, socksCmdConnect, dst)
			if rep != socksRepSucceeded {
				t.Fatalf("rep %#x", rep)
			}
			if !bnd.ip.IsLoopback() || bnd.port == 0 {
				t.Errorf("BND = %v, want the dialed conn's loopback address", bnd)
			}
			echoHalfClose(t, c, strings.Repeat("hello through socks ", 5000))
		})
	}
}

func TestSOCKS5PipelinedData(t *testing.T) {
	netstacktest.CheckLeaks(t)
	addr := startSOCKS(t, &Server{})
	_, port := proxytest.HostPort(t, proxytest.TCPEcho(t, "tcp", "127.0.0.1:0"))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	// Greeting, request and data in one write, before any reply.
	msg := append([]byte{5, 1, 0, 5, 1, 0}, socksAddrBytes("app.test", port)...)
	msg = append(msg, "early"...)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	var m [2]byte
	if _, err := io.ReadFull(c, m[:]); err != nil || m != [2]byte{5, 0} {
		t.Fatalf("method %x, %v", m, err)
	}
	if rep, _ := readSOCKSReply(t, c); rep != socksRepSucceeded {
		t.Fatalf("rep %#x", rep)
	}
	c.(*net.TCPConn).CloseWrite()
	if got, err := io.ReadAll(c); err != nil || string(got) != "early" {
		t.Fatalf("echo %q, %v; want the data sent with the request", got, err)
	}
}

func TestSOCKS5Auth(t *testing.T) {
	netstacktest.CheckLeaks(t)
	authAddr := startSOCKS(t, &Server{Username: "alice", Password: "s3cret"})
	openAddr := startSOCKS(t, &Server{})
	_, port := proxytest.HostPort(t, proxytest.TCPEcho(t, "tcp", "127.0.0.1:0"))
	auth := func(user, pass string) []byte {
		b := append([]byte{1, byte(len(user))}, user...)
		return append(append(b, byte(len(pass))), pass...)
	}

	t.Run("success", func(t *testing.T) {
		c, m := socksDial(t, authAddr, socksMethodNone, socksMethodUserPass)
		if m != socksMethodUserPass {
			t.Fatalf("method %#x, want 0x02", m)
		}
		c.Write(auth("alice", "s3cret"))
		var st [2]byte
		if _, err := io.ReadFull(c, st[:]); err != nil || st != [2]byte{1, 0} {
			t.Fatalf("auth status %x, %v", st, err)
		}
		if rep, _ := socksRequest(t, c, socksCmdConnect, socksAddrBytes("app.test", port)); rep != 0 {
			t.Fatalf("rep %#x", rep)
		}
		echoHalfClose(t, c, "authenticated")
	})
	for _, tc := range []struct{ name, user, pass string }{
		{"wrong-password", "alice", "guess"},
		{"wrong-user", "bob", "s3cret"},
		{"empty", "", ""},
		{"prefix", "alice", "s3cre"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, m := socksDial(t, authAddr, socksMethodUserPass)
			if m != socksMethodUserPass {
				t.Fatalf("method %#x", m)
			}
			c.Write(auth(tc.user, tc.pass))
			var st [2]byte
			if _, err := io.ReadFull(c, st[:]); err != nil || st != [2]byte{1, 1} {
				t.Fatalf("auth status %x, %v; want 01 01", st, err)
			}
			proxytest.ExpectEOF(t, c)
		})
	}
	t.Run("bad-auth-version", func(t *testing.T) {
		c, _ := socksDial(t, authAddr, socksMethodUserPass)
		c.Write([]byte{5, 5, 'a', 'l', 'i', 'c', 'e'})
		var st [2]byte
		if _, err := io.ReadFull(c, st[:]); err != nil || st[1] == 0 {
			t.Fatalf("auth status %x, %v; want failure", st, err)
		}
		proxytest.ExpectEOF(t, c)
	})
	t.Run("no-acceptable-method", func(t *testing.T) {
		c, m := socksDial(t, authAddr, socksMethodNone, 0x01)
		if m != socksMethodNoAcceptable {
			t.Fatalf("method %#x, want 0xff", m)
		}
		proxytest.ExpectEOF(t, c)
	})
	t.Run("auth-offered-to-open-server", func(t *testing.T) {
		c, m := socksDial(t, openAddr, socksMethodUserPass)
		if m != socksMethodNoAcceptable {
			t.Fatalf("method %#x, want 0xff", m)
		}
		proxytest.ExpectEOF(t, c)
	})
	t.Run("zero-methods", func(t *testing.T) {
		c, m := socksDial(t, openAddr)
		if m != socksMethodNoAcceptable {
			t.Fatalf("method %#x, want 0xff", m)
		}
		proxytest.ExpectEOF(t, c)
	})
}

func TestSOCKS5DialErrors(t *testing.T) {
	netstacktest.CheckLeaks(t)
	addr := startSOCKS(t, &Server{DialTimeout: 50 * time.Millisecond})
	closedPort := netstacktest.ClosedPort(t, "tcp", "127.0.0.1").Port() // nothing listens there
	for _, tt := range []struct {
		name string
		dst  []byte
		rep  byte
	}{
		{"refused", socksAddrBytes("127.0.0.1", closedPort), socksRepConnRefused},
		{"refused-by-name", socksAddrBytes("app.test", closedPort), socksRepConnRefused},
		{"not-allowed", socksAddrBytes("blocked.test", 443), socksRepNotAllowed},
		{"timeout", socksAddrBytes("slow.test", 443), socksRepTTLExpired},
		{"net-unreachable", socksAddrBytes("netdown.test", 443), socksRepNetUnreachable},
		{"host-unreachable", socksAddrBytes("nohost.test", 443), socksRepHostUnreachable},
		{"general", socksAddrBytes("broken.test", 443), socksRepGeneralFailure},
		{"port-zero", socksAddrBytes("app.test", 0), socksRepHostUnreachable},
		{"not-loopback", socksAddrBytes("192.0.2.1", 443), socksRepGeneralFailure},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := socksDial(t, addr, socksMethodNone)
			rep, bnd := socksRequest(t, c, socksCmdConnect, tt.dst)
			if rep != tt.rep {
				t.Fatalf("rep %#x, want %#x", rep, tt.rep)
			}
			if bnd.ip != netip.IPv4Unspecified() || bnd.port != 0 {
				t.Errorf("BND %v, want 0.0.0.0:0", bnd)
			}
			proxytest.ExpectEOF(t, c)
		})
	}
}

func TestSOCKS5DialReplyCodes(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want byte
	}{
		{proxy.ErrNotAllowed, socksRepNotAllowed},
		{fmt.Errorf("x: %w", proxy.ErrNotAllowed), socksRepNotAllowed},
		{syscall.ECONNREFUSED, socksRepConnRefused},
		{&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, socksRepConnRefused}, // as the tunnels' stacks report it
		{context.DeadlineExceeded, socksRepTTLExpired},
		{os.ErrDeadlineExceeded, socksRepTTLExpired},
		{&net.DNSError{Err: "timeout", IsTimeout: true}, socksRepTTLExpired},
		{syscall.ENETUNREACH, socksRepNetUnreachable},
		{syscall.EHOSTUNREACH, socksRepHostUnreachable},
		{&net.DNSError{Err: "no such host", Name: "x.test", IsNotFound: true}, socksRepHostUnreachable},
		{context.Canceled, socksRepGeneralFailure},
		{errors.New("boom"), socksRepGeneralFailure},
	} {
		if got := socksDialReply(tt.err); got != tt.want {
			t.Errorf("socksDialReply(%v) = %#x, want %#x", tt.err, got, tt.want)
		}
	}
}

func TestSOCKS5Malformed(t *testing.T) {
	netstacktest.CheckLeaks(t)
	addr := startSOCKS(t, &Server{})
	_, port := proxytest.HostPort(t, proxytest.TCPEcho(t, "tcp", "127.0.0.1:0"))
	greet := []byte{5, 1, 0}
	req := func(b ...byte) []byte { return append(slices.Clone(greet), b...) }
	dst := socksAddrBytes("127.0.0.1", port)
	for _, tt := range []struct {
		name  string
		send  []byte
		reply []byte // expected bytes before EOF
	}{
		{"empty", nil, nil},
		{"bad-version", []byte{4, 1, 0}, nil},
		{"http-request", []byte("GET / HTTP/1.1\r\n\r\n"), nil},
		{"truncated-greeting", []byte{5, 3, 0}, nil},
		{"truncated-request", req(5, 1, 0, 1, 127), []byte{5, 0}},
		{"truncated-domain", req(5, 1, 0, 3, 200, 'a', 'b'), []byte{5, 0}},
		{"bad-request-version", req(append([]byte{4, 1, 0}, dst...)...), []byte{5, 0}},
		{"unknown-command", req(append([]byte{5, 9, 0}, dst...)...), []byte{5, 0, 5, socksRepCmdNotSupported, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"bind", req(append([]byte{5, 2, 0}, dst...)...), []byte{5, 0, 5, socksRepCmdNotSupported, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"unknown-atyp", req(5, 1, 0, 9, 1, 2, 3, 4, 0, 80), []byte{5, 0, 5, socksRepAtypNotSupported, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"empty-domain", req(5, 1, 0, 3, 0, 0, 80), []byte{5, 0, 5, socksRepHostUnreachable, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"domain-with-colon", req(append([]byte{5, 1, 0}, socksAddrBytes("a:b", 80)...)...), []byte{5, 0, 5, socksRepHostUnreachable, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"domain-with-zone", req(append([]byte{5, 1, 0}, socksAddrBytes("fe80::1%lo", 80)...)...), []byte{5, 0, 5, socksRepHostUnreachable, 0, 1, 0, 0, 0, 0, 0, 0}},
		{"domain-with-nul", req(append([]byte{5, 1, 0}, socksAddrBytes("a\x00b", 80)...)...), []byte{5, 0, 5, socksRepHostUnreachable, 0, 1, 0, 0, 0, 0, 0, 0}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write(tt.send)
			c.(*net.TCPConn).CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("read: %v", err)
			}
			if !bytes.Equal(got, tt.reply) {
				t.Fatalf("got %x, want %x then EOF", got, tt.reply)
			}
		})
	}
	// The server still works.
	c, _ := socksDial(t, addr, socksMethodNone)
	if rep, _ := socksRequest(t, c, socksCmdConnect, dst); rep != 0 {
		t.Fatalf("rep %#x", rep)
	}
	echoHalfClose(t, c, "still fine")
}

func TestSOCKS5HandshakeTimeout(t *testing.T) {
	netstacktest.CheckLeaks(t)
	addr := startSOCKS(t, &Server{HandshakeTimeout: 100 * time.Millisecond})
	for _, tt := range []struct {
		name string
		send []byte
		want []byte
	}{
		{"silent", nil, nil},
		{"half-greeting", []byte{5}, nil},
		{"no-request", []byte{5, 1, 0}, []byte{5, 0}},
		{"half-request", []byte{5, 1, 0, 5, 1, 0, 3, 20, 'a'}, []byte{5, 0}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write(tt.send)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(c) // returns once the server closes
			if err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("read: %v (server did not close)", err)
			}
			if !bytes.Equal(got, tt.want) {
				t.Fatalf("got %x, want %x", got, tt.want)
			}
		})
	}
}

func TestSOCKS5MaxConns(t *testing.T) {
	netstacktest.CheckLeaks(t)
	addr := startSOCKS(t, &Server{MaxConns: 2})
	c1, _ := socksDial(t, addr, socksMethodNone)
	c2, _ := socksDial(t, addr, socksMethodNone) // both are now being served
	c3, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	c3.Write([]byte{5, 1, 0})
	proxytest.ExpectEOF(t, c3)
	c1.Close()
	// The slot frees once the server has noticed; retry until it has.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte{5, 1, 0})
		var m [2]byte
		_, err = io.ReadFull(c, m[:])
		c.Close()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no slot freed after closing a connection")
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = c2
}

func TestSOCKS5XNetProxy(t *testing.T) {
	netstacktest.CheckLeaks(t)
	_, port := proxytest.HostPort(t, proxytest.TCPEcho(t, "tcp", "127.0.0.1:0"))
	for _, tt := range []struct {
		name string
		srv  *Server
		auth *xproxy.Auth
		dst  string
	}{
		{"no-auth-domain", &Server{}, nil, fmt.Sprintf("app.test:%d", port)},
		{"no-auth-ip", &Server{}, nil, fmt.Sprintf("127.0.0.1:%d", port)},
		{"auth-domain", &Server{Username: "u", Password: "p"}, &xproxy.Auth{User: "u", Password: "p"}, fmt.Sprintf("app.test:%d", port)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d, err := xproxy.SOCKS5("tcp", startSOCKS(t, tt.srv), tt.auth, xproxy.Direct)
			if err != nil {
				t.Fatal(err)
			}
			c, err := d.(xproxy.ContextDialer).DialContext(context.Background(), "tcp", tt.dst)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			// The socks.Conn of x/net hides CloseWrite: echo without it.
			msg := "via x/net/proxy"
			io.WriteString(c, msg)
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
				t.Fatalf("echo %q, %v", got, err)
			}
		})
	}
	t.Run("wrong-password", func(t *testing.T) {
		d, _ := xproxy.SOCKS5("tcp", startSOCKS(t, &Server{Username: "u", Password: "p"}), &xproxy.Auth{User: "u", Password: "x"}, xproxy.Direct)
		if c, err := d.Dial("tcp", fmt.Sprintf("app.test:%d", port)); err == nil {
			c.Close()
			t.Fatal("dial with a wrong password succeeded")
		}
	})
	t.Run("refused", func(t *testing.T) {
		d, _ := xproxy.SOCKS5("tcp", startSOCKS(t, &Server{}), nil, xproxy.Direct)
		_, err := d.Dial("tcp", "blocked.test:443")
		if err == nil || !strings.Contains(err.Error(), "not allowed") {
			t.Fatalf("err = %v, want connection not allowed", err)
		}
	})
}

// udpAssociate opens a UDP association from the client address reqAddr
// and returns its control connection and relay address.
func udpAssociate(t testing.TB, proxyAddr string, reqAddr []byte) (net.Conn, netip.AddrPort) {
	t.Helper()
	c, _ := socksDial(t, proxyAddr, socksMethodNone)
	rep, bnd := socksRequest(t, c, socksCmdUDPAssociate, reqAddr)
	if rep != socksRepSucceeded {
		t.Fatalf("udp associate rep %#x", rep)
	}
	if !bnd.ip.IsLoopback() || bnd.port == 0 {
		t.Fatalf("relay address %v", bnd)
	}
	c.SetDeadline(time.Time{})
	return c, netip.AddrPortFrom(bnd.ip, bnd.port)
}

func listenUDP(t testing.TB, ip string) *net.UDPConn {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		t.Skipf("listen udp %s: %v", ip, err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// udpExchange sends payload to dst through the relay and expects it back
// with dst as the source in the SOCKS header.
func udpExchange(t testing.TB, pc *net.UDPConn, relay netip.AddrPort, dst []byte, payload string) {
	t.Helper()
	hdr := append([]byte{0, 0, 0}, dst...)
	if _, err := pc.WriteToUDPAddrPort(append(slices.Clone(hdr), payload...), relay); err != nil {
		t.Fatal(err)
	}
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 70000)
	n, from, err := pc.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("read relayed reply: %v", err)
	}
	if from != relay {
		t.Fatalf("reply from %v, want the relay %v", from, relay)
	}
	if !bytes.HasPrefix(buf[:n], hdr) || string(buf[len(hdr):n]) != payload {
		t.Fatalf("reply %q, want header %x and %q", buf[:n], hdr, payload)
	}
}

func TestSOCKS5UDPAssociate(t *testing.T) {
	netstacktest.CheckLeaks(t)
	addr := startSOCKS(t, &Server{})
	port, received := pxUDPEcho(t)
	pc := listenUDP(t, "127.0.0.1")
	control, relay := udpAssociate(t, addr, socksAddrBytes("0.0.0.0", 0))

	byIP := socksAddrBytes("127.0.0.1", port)
	byName := socksAddrBytes("app.test", port)
	udpExchange(t, pc, relay, byIP, "by ip")
	udpExchange(t, pc, relay, byName, "by name")
	udpExchange(t, pc, relay, byIP, "by ip again")
	udpExchange(t, pc, relay, byName, "")
	udpExchange(t, pc, relay, byName, strings.Repeat("x", 60000))

	// Datagrams the relay must drop: another source port, another source
	// IP, fragments, bad headers, a destination it may not dial.
	otherPort := listenUDP(t, "127.0.0.1")
	otherPort.WriteToUDPAddrPort(append([]byte{0, 0, 0}, append(byIP, "spoof port"...)...), relay)
	if otherIP, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)}); err == nil {
		defer otherIP.Close()
		otherIP.WriteToUDPAddrPort(append([]byte{0, 0, 0}, append(byIP, "spoof ip"...)...), relay)
	} else {
		t.Logf("no 127.0.0.2: %v", err)
	}
	pc.WriteToUDPAddrPort(append([]byte{0, 0, 1}, append(byIP, "fragment"...)...), relay)
	pc.WriteToUDPAddrPort(append([]byte{1, 0, 0}, append(byIP, "reserved"...)...), relay)
	pc.WriteToUDPAddrPort([]byte{0, 0, 0, 9, 1, 2}, relay)
	pc.WriteToUDPAddrPort([]byte{0, 0, 0, 3, 50, 'a'}, relay)
	pc.WriteToUDPAddrPort(append([]byte{0, 0, 0}, append(socksAddrBytes("blocked.test", 53), "blocked"...)...), relay)
	pc.WriteToUDPAddrPort(append([]byte{0, 0, 0}, append(socksAddrBytes("app.test", 0), "port zero"...)...), relay)
	// The relay reads its socket in order: once this comes back, the
	// ones above have been handled.
	udpExchange(t, pc, relay, byIP, "last")
	want := []string{"by ip", "by name", "by ip again", "", strings.Repeat("x", 60000), "last"}
	if got := received(); !slices.Equal(got, want) {
		t.Errorf("echo server received %d datagrams %.80q, want %d", len(got), got, len(want))
	}
	otherPort.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, _, err := otherPort.ReadFromUDPAddrPort(make([]byte, 100)); err == nil {
		t.Errorf("spoofing socket got a %d-byte reply", n)
	}

	// Closing the control connection ends the association: the relay's
	// port is released.
	control.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(relay))
		if err == nil {
			l.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("relay socket still open after the control connection closed: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSOCKS5UDPAssociateRules(t *testing.T) {
	netstacktest.CheckLeaks(t)
	addr := startSOCKS(t, &Server{})
	port, received := pxUDPEcho(t)
	byIP := socksAddrBytes("127.0.0.1", port)

	t.Run("declared-port", func(t *testing.T) {
		pc := listenUDP(t, "127.0.0.1")
		other := listenUDP(t, "127.0.0.1")
		_, relay := udpAssociate(t, addr, socksAddrBytes("127.0.0.1", uint16(pc.LocalAddr().(*net.UDPAddr).Port)))
		// Another port is refused even as the first datagram.
		other.WriteToUDPAddrPort(append([]byte{0, 0, 0}, append(byIP, "wrong port"...)...), relay)
		udpExchange(t, pc, relay, byIP, "declared")
		if slices.Contains(received(), "wrong port") {
			t.Error("datagram from an undeclared port was relayed")
		}
	})
	t.Run("foreign-address", func(t *testing.T) {
		c, _ := socksDial(t, addr, socksMethodNone)
		if rep, _ := socksRequest(t, c, socksCmdUDPAssociate, socksAddrBytes("127.0.0.2", 5000)); rep != socksRepNotAllowed {
			t.Fatalf("rep %#x, want 0x02", rep)
		}
		proxytest.ExpectEOF(t, c)
	})
}

func TestSOCKS5UDPIdleTimeout(t *testing.T) {
	netstacktest.CheckLeaks(t)
	addr := startSOCKS(t, &Server{UDPIdleTimeout: 100 * time.Millisecond})
	port, _ := pxUDPEcho(t)
	pc := listenUDP(t, "127.0.0.1")
	control, relay := udpAssociate(t, addr, socksAddrBytes("0.0.0.0", 0))
	udpExchange(t, pc, relay, socksAddrBytes("app.test", port), "once")
	proxytest.ExpectEOF(t, control) // the idle association closes its control connection
}

func TestSOCKS5Close(t *testing.T) {
	netstacktest.CheckLeaks(t)
	s := &Server{Logf: t.Logf, Dial: proxytest.Dial}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	addr := ln.Addr().String()
	_, port := proxytest.HostPort(t, proxytest.TCPEcho(t, "tcp", "127.0.0.1:0"))
	udpPort, _ := pxUDPEcho(t)

	// An active relay, an association with a destination, a client in
	// the handshake and one waiting for a slow dial.
	relayed, _ := socksDial(t, addr, socksMethodNone)
	socksRequest(t, relayed, socksCmdConnect, socksAddrBytes("app.test", port))
	pc := listenUDP(t, "127.0.0.1")
	control, relay := udpAssociate(t, addr, socksAddrBytes("0.0.0.0", 0))
	udpExchange(t, pc, relay, socksAddrBytes("app.test", udpPort), "x")
	socksDial(t, addr, socksMethodNone)
	slow, _ := socksDial(t, addr, socksMethodNone)
	slow.Write(append([]byte{5, 1, 0}, socksAddrBytes("slow.test", 1)...))

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve = %v after Close, want nil", err)
	}
	relayed.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(relayed); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("relayed connection not closed: %v", err)
	}
	proxytest.ExpectEOF(t, control)
	if err := s.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(ln2); err != nil {
		t.Fatalf("Serve after Close = %v, want nil", err)
	}
	if _, err := ln2.Accept(); err == nil {
		t.Fatal("Serve after Close left its listener open")
	}
}

func TestSOCKS5Curl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl is not installed")
	}
	netstacktest.CheckLeaks(t)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s %s", r.Host, r.URL.Path)
	}))
	defer upstream.Close()
	_, port := proxytest.HostPort(t, upstream.Listener.Addr())
	for _, tt := range []struct {
		name string
		srv  *Server
		args []string
		host string
	}{
		{"socks5-hostname", &Server{}, []string{"--socks5-hostname"}, "app.test"},
		{"socks5-ip", &Server{}, []string{"--socks5"}, "127.0.0.1"},
		{"socks5-hostname-auth", &Server{Username: "u", Password: "p w"}, []string{"--proxy-user", "u:p w", "--socks5-hostname"}, "app.test"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			proxyAddr := startSOCKS(t, tt.srv)
			url := fmt.Sprintf("http://%s:%d/path", tt.host, port)
			args := append([]string{"-q", "-sS", "--max-time", "20"}, tt.args...)
			out := proxytest.Curl(t, curl, append(args, proxyAddr, url)...)
			if want := fmt.Sprintf("hello %s:%d /path", tt.host, port); out != want {
				t.Fatalf("curl got %q, want %q", out, want)
			}
		})
	}
	upstream.Close()
}

// FuzzSOCKS5Handshake feeds arbitrary bytes as a client's first packets
// into the connection handler. The DialFunc reaches no network: TCP
// destinations are in-memory echoes or fail, by port.
func FuzzSOCKS5Handshake(f *testing.F) {
	connect := func(dst []byte) []byte { return append([]byte{5, 1, 0, 5, 1, 0}, dst...) }
	f.Add(connect(socksAddrBytes("127.0.0.1", 80)), false)
	f.Add(append(connect(socksAddrBytes("app.test", 80)), "payload"...), false)
	f.Add(connect(socksAddrBytes("::1", 81)), false)
	f.Add(connect(socksAddrBytes("app.test", 82)), false)
	f.Add(connect(socksAddrBytes("app.test", 83)), false)
	f.Add([]byte{5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0}, false)
	f.Add([]byte{5, 1, 0, 5, 9, 0, 4, 1, 2}, false)
	f.Add([]byte{5, 1, 2, 1, 1, 'u', 1, 'p', 5, 1, 0, 3, 1, 'a', 0, 80}, true)
	f.Add([]byte{5, 1, 2, 1, 1, 'u', 1, 'x'}, true)
	f.Add([]byte{5, 0}, false)
	f.Add([]byte{4, 1, 0, 80, 127, 0, 0, 1, 0}, false)
	f.Add([]byte{}, false)

	netstacktest.CheckLeaks(f)
	f.Fuzz(func(t *testing.T, data []byte, auth bool) {
		var echoes sync.WaitGroup
		s := &Server{
			HandshakeTimeout: 50 * time.Millisecond,
			DialTimeout:      20 * time.Millisecond,
			UDPIdleTimeout:   50 * time.Millisecond,
			Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
				_, port, _ := net.SplitHostPort(address)
				switch {
				case network != "tcp":
					return nil, errors.New("no udp here")
				case strings.HasSuffix(port, "1"):
					return nil, syscall.ECONNREFUSED
				case strings.HasSuffix(port, "2"):
					return nil, proxy.ErrNotAllowed
				case strings.HasSuffix(port, "3"):
					<-ctx.Done()
					return nil, ctx.Err()
				}
				c1, c2 := net.Pipe()
				echoes.Go(func() {
					io.Copy(c2, c2)
					c2.Close()
				})
				return c1, nil
			},
		}
		if auth {
			s.Username, s.Password = "u", "p"
		}
		s.init()
		client, server := net.Pipe()
		// Bytes the handler has not read within 50 ms are not sent: a
		// handler waiting on a dial reads nothing meanwhile.
		client.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
		client.SetReadDeadline(time.Now().Add(time.Second))
		s.startConn(server)
		var reader sync.WaitGroup
		reader.Go(func() { io.Copy(io.Discard, client) })
		client.Write(data)
		client.Close()
		reader.Wait()
		closed := make(chan struct{})
		go func() {
			s.Close()
			echoes.Wait()
			close(closed)
		}()
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			t.Fatalf("handler hung on input %x", data)
		}
	})
}

// With authentication on, a UDP association must name the client's port:
// after an authenticated client's ASSOCIATE 0.0.0.0:0, a local process
// with no credentials took the association with the first datagram
// (issue 11, finding 8). Naming the port binds the relay to it.
func TestSOCKS5UDPAssociateWithAuthNeedsClientPort(t *testing.T) {
	netstacktest.CheckLeaks(t)
	addr := startSOCKS(t, &Server{Username: "alice", Password: "s3cret"})
	port, received := pxUDPEcho(t)
	login := func() net.Conn {
		t.Helper()
		c, m := socksDial(t, addr, socksMethodUserPass)
		if m != socksMethodUserPass {
			t.Fatalf("method %#x", m)
		}
		c.Write(append(append([]byte{1, 5}, "alice"...), append([]byte{6}, "s3cret"...)...))
		var st [2]byte
		if _, err := io.ReadFull(c, st[:]); err != nil || st != [2]byte{1, 0} {
			t.Fatalf("auth status %x, %v", st, err)
		}
		return c
	}
	c := login()
	if rep, _ := socksRequest(t, c, socksCmdUDPAssociate, socksAddrBytes("0.0.0.0", 0)); rep != socksRepNotAllowed {
		t.Fatalf("associate 0.0.0.0:0 with authentication on: rep %#x, want %#x", rep, socksRepNotAllowed)
	}

	pc := listenUDP(t, "127.0.0.1")
	c = login()
	rep, bnd := socksRequest(t, c, socksCmdUDPAssociate, socksAddrBytes("0.0.0.0", uint16(pc.LocalAddr().(*net.UDPAddr).Port)))
	if rep != socksRepSucceeded {
		t.Fatalf("associate naming the client's port: rep %#x", rep)
	}
	c.SetDeadline(time.Time{})
	relay := netip.AddrPortFrom(bnd.ip, bnd.port)
	dst := socksAddrBytes("127.0.0.1", port)
	// Another local process, first: dropped, and it does not take the
	// association.
	intruder := listenUDP(t, "127.0.0.1")
	intruder.WriteToUDPAddrPort(append([]byte{0, 0, 0}, append(dst, "intruder"...)...), relay)
	udpExchange(t, pc, relay, dst, "client")
	if got := received(); !slices.Equal(got, []string{"client"}) {
		t.Errorf("echo server received %q, want only the client's datagram", got)
	}
}

// TestSOCKS5Stats: the server counts connections, failed
// authentications, and refusals by reason.
func TestSOCKS5Stats(t *testing.T) {
	netstacktest.CheckLeaks(t)
	s := &Server{Username: "alice", Password: "s3cret", MaxConns: 4}
	addr := startSOCKS(t, s)
	_, port := proxytest.HostPort(t, proxytest.TCPEcho(t, "tcp", "127.0.0.1:0"))
	closedPort := netstacktest.ClosedPort(t, "tcp", "127.0.0.1").Port()
	login := func(pass string) net.Conn {
		c, _ := socksDial(t, addr, socksMethodUserPass)
		c.Write(append(append([]byte{1, 5}, "alice"...), append([]byte{byte(len(pass))}, pass...)...))
		var st [2]byte
		io.ReadFull(c, st[:])
		return c
	}
	connect := func(dst []byte) {
		c := login("s3cret")
		if rep, _ := socksRequest(t, c, socksCmdConnect, dst); rep == 0 {
			echoHalfClose(t, c, "counted")
		}
		c.Close()
	}
	connect(socksAddrBytes("app.test", port))        // relayed
	connect(socksAddrBytes("blocked.test", 443))     // policy
	connect(socksAddrBytes("127.0.0.1", closedPort)) // dial
	connect(socksAddrBytes("app.test", 0))           // request
	for range 2 {
		proxytest.ExpectEOF(t, login("guess")) // auth failures
	}
	c, _ := socksDial(t, addr, socksMethodNone) // no acceptable method: request
	proxytest.ExpectEOF(t, c)

	// Everything above is closed; wait until the server has let go.
	netstacktest.WaitFor(t, func() bool { return s.Stats().Open == 0 })
	st := s.Stats()
	want := proxy.Stats{Conns: 7, AuthFailures: 2}
	want.Refused[proxy.RefusedPolicy] = 1
	want.Refused[proxy.RefusedDial] = 1
	want.Refused[proxy.RefusedRequest] = 2
	if st != want {
		t.Errorf("stats %+v, want %+v", st, want)
	}

	// Beyond MaxConns: a limit refusal.
	var held []net.Conn
	for range 4 {
		c, _ := socksDial(t, addr, socksMethodUserPass)
		held = append(held, c)
	}
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	proxytest.ExpectEOF(t, extra)
	for _, c := range append(held, extra) {
		c.Close()
	}
	if n := s.Stats().Refused[proxy.RefusedLimit]; n != 1 {
		t.Errorf("limit refusals %d, want 1", n)
	}
}
