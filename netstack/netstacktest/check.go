// Package netstacktest holds the helpers every layer's tests share: a
// host dialer that reaches only loopback, TCP and UDP echo servers, ICMP
// packets, waiting for a condition, the leak check, test binaries that
// play helper processes, and tests run in a network namespace of their
// own. It imports nothing of appconnector, so any package's tests may use
// it.
package netstacktest

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Dialer is a host dialer for tests. It counts dials, can hold them until
// Hold is closed (a blackholed destination), and refuses any destination
// that is not loopback, whatever the code under test asks for: test
// traffic must never leave the machine.
type Dialer struct {
	// Dials counts DialContext calls, refused ones included; TCPDials
	// those for TCP.
	Dials, TCPDials atomic.Int64
	// Hold, if not nil, makes dials wait until it is closed or their
	// context ends.
	Hold chan struct{}
	// Blackhole, if set, names destinations ("ip:port") that never
	// answer: dials to them wait until their context ends.
	Blackhole func(addr string) bool
	// NamespaceLocal holds addresses besides loopback that dials may
	// reach: only for a test running in a network namespace of its own
	// (InNetns), which put them on that namespace's loopback. Set it with
	// AllowNamespaceLocal.
	NamespaceLocal atomic.Pointer[[]netip.Addr]
	d              net.Dialer
}

// AllowNamespaceLocal lets dials reach addrs, which a test running in its
// own network namespace (InNetns) assigned there.
func (d *Dialer) AllowNamespaceLocal(addrs ...netip.Addr) { d.NamespaceLocal.Store(&addrs) }

func (d *Dialer) allowed(a netip.Addr) bool {
	if a.IsLoopback() {
		return true
	}
	if l := d.NamespaceLocal.Load(); l != nil {
		return slices.Contains(*l, a)
	}
	return false
}

// DialContext is a netx.DialFunc.
func (d *Dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d.Dials.Add(1)
	if strings.HasPrefix(network, "tcp") {
		d.TCPDials.Add(1)
	}
	if ap, err := netip.ParseAddrPort(addr); err != nil || !d.allowed(ap.Addr().Unmap()) {
		return nil, fmt.Errorf("test dialer: refusing non-loopback destination %q", addr)
	}
	if d.Blackhole != nil && d.Blackhole(addr) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if d.Hold != nil {
		select {
		case <-d.Hold:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return d.d.DialContext(ctx, network, addr)
}

// EchoTCP sends n random bytes on c, which leads to a TCP echo server
// (such as TCPEcho), half-closes, and checks that exactly those bytes come
// back followed by the server's FIN: the data path and half-close both
// work.
func EchoTCP(tb testing.TB, c net.Conn, n int) {
	tb.Helper()
	want := make([]byte, n)
	rand.Read(want)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(want)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		werr <- err
	}()
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	got, err := io.ReadAll(c) // ends only when the server's FIN comes back
	if err != nil {
		tb.Fatalf("echo: read after %d of %d bytes: %v", len(got), n, err)
	}
	if err := <-werr; err != nil {
		tb.Fatalf("echo: write: %v", err)
	}
	if !bytes.Equal(got, want) {
		tb.Fatalf("echo: got %d bytes back, want the %d sent", len(got), n)
	}
}

// WaitFor polls cond until it holds, failing the test after 20 seconds.
func WaitFor(tb testing.TB, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatal("condition not reached within 20s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// RSSKiB returns this process's resident set size in KiB (Linux), or 0.
func RSSKiB() int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

// CheckLeaks fails tb if goroutines started after this call are still
// running once tb's cleanups (registered later, so run earlier) are done.
func CheckLeaks(tb testing.TB) {
	tb.Helper()
	opt := goleak.IgnoreCurrent()
	tb.Cleanup(func() { goleak.VerifyNone(tb, opt) })
}

// SyncBuffer is a bytes.Buffer that several goroutines may write to (a
// log handler's output, say) while the test reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
