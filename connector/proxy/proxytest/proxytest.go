// Package proxytest holds what the SOCKS5 and HTTP proxies' tests share:
// a dial function that reaches only loopback, echo servers and curl.
package proxytest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector/proxy"
)

// Every connection the proxies' tests make stays on loopback: the proxies
// reach the world only through Dial, which refuses anything but loopback IP
// literals and the test hostnames below.

// hosts maps the test hostnames to loopback addresses.
var hosts = map[string]string{
	"app.test":    "127.0.0.1",
	"app6.test":   "::1",
	"example.com": "127.0.0.1", // the name in httptest's TLS certificate
}

// Dial is the proxies' dial in tests. Besides hosts it knows
// "blocked.test" (proxy.ErrNotAllowed), "slow.test" (waits for ctx),
// "netdown.test" (ENETUNREACH), "nohost.test" (EHOSTUNREACH) and
// "broken.test" (some other error).
func Dial(ctx context.Context, network, address string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	switch host {
	case "blocked.test":
		return nil, fmt.Errorf("policy for %s: %w", host, proxy.ErrNotAllowed)
	case "slow.test":
		<-ctx.Done()
		return nil, fmt.Errorf("dial %s: %w", address, ctx.Err())
	case "netdown.test":
		return nil, &net.OpError{Op: "dial", Net: network, Err: os.NewSyscallError("connect", syscall.ENETUNREACH)}
	case "nohost.test":
		return nil, &net.OpError{Op: "dial", Net: network, Err: os.NewSyscallError("connect", syscall.EHOSTUNREACH)}
	case "broken.test":
		return nil, errors.New("tunnel is down")
	}
	if mapped, ok := hosts[host]; ok {
		host = mapped
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("test dialer refuses %q: not loopback", address)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
}

// TCPEcho starts a TCP echo server on addr that half-closes after the
// client's EOF.
func TCPEcho(t testing.TB, network, addr string) net.Addr {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("listen %s %s: %v", network, addr, err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
				io.Copy(io.Discard, c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr()
}

func HostPort(t testing.TB, a net.Addr) (string, uint16) {
	t.Helper()
	ap := netip.MustParseAddrPort(a.String())
	return ap.Addr().String(), ap.Port()
}

// ExpectEOF checks that the server closes c without sending more.
func ExpectEOF(t testing.TB, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("want EOF, got %v", err)
	}
	if len(b) > 0 {
		t.Fatalf("want EOF, got more bytes %x", b)
	}
}

// Curl runs curl with an environment free of proxy settings.
func Curl(t testing.TB, curl string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, curl, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("curl %q: %v: %s", args, err, stderr.String())
	}
	return string(out)
}

// Serve runs serve on a new loopback listener until the test ends, then
// calls close and checks that serve returned nil; it returns the
// listener's address.
func Serve(t testing.TB, serve func(net.Listener) error, close func() error) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- serve(ln) }()
	t.Cleanup(func() {
		close()
		if err := <-done; err != nil {
			t.Errorf("Serve returned %v after Close, want nil", err)
		}
	})
	return ln.Addr().String()
}
