// Package proxy holds what appconnector's SOCKS5 and HTTP proxies share:
// the error their dial function (a netx.DialFunc) returns for a refused
// destination, the lifecycle of a proxy (its listeners, connections and
// goroutines), the byte relay between two connections, and the
// classification of dial errors. The proxies themselves are its
// subpackages socks5 and httpproxy.
package proxy

import (
	"context"
	"errors"
	"io"
	"math"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/appconnector/appconnector/connector/logger"
)

// ErrNotAllowed is what a proxy's dial returns (possibly wrapped) for a
// destination that policy refuses. The SOCKS5 server answers it with
// "connection not allowed by ruleset" (0x02) and the HTTP proxy with
// 403 Forbidden.
var ErrNotAllowed = errors.New("destination not allowed")

// Defaults shared by both proxies.
const (
	DefaultDialTimeout = 10 * time.Second
	DefaultMaxConns    = 1024
)

// Group is the lifecycle of one proxy: the context that Close cancels,
// the listeners and client connections that Close closes, and a WaitGroup
// over every goroutine the proxy starts. Init it before use.
type Group struct {
	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex // guards the fields after it
	closed  bool
	conns   map[net.Conn]struct{}  // client connections, counted for MaxConns
	closers map[io.Closer]struct{} // listeners, upstream connections: anything else Close closes

	accepted     atomic.Uint64
	refused      [numRefusals]atomic.Uint64
	authFailures atomic.Uint64
}

// Why a proxy refused a client, as Stats counts it.
const (
	RefusedLimit   = iota // the proxy was closed or at its connection limit
	RefusedRequest        // a malformed, unsupported or abandoned request
	RefusedPolicy         // the dial said the destination is not allowed (ErrNotAllowed)
	RefusedDial           // the dial failed otherwise
	numRefusals
)

// RefusalNames name the Refused... reasons, for metrics.
var RefusalNames = [numRefusals]string{"limit", "request", "policy", "dial"}

// Stats are a proxy's counters.
type Stats struct {
	Conns        uint64              // client connections accepted
	Open         int                 // client connections open now
	Refused      [numRefusals]uint64 // refusals, indexed by RefusedLimit...
	AuthFailures uint64              // failed authentications (not in Refused)
}

// Stats returns g's counters.
func (g *Group) Stats() Stats {
	st := Stats{Conns: g.accepted.Load(), AuthFailures: g.authFailures.Load()}
	for i := range st.Refused {
		st.Refused[i] = g.refused[i].Load()
	}
	g.mu.Lock()
	st.Open = len(g.conns)
	g.mu.Unlock()
	return st
}

// Refuse counts a refusal for reason (RefusedRequest...).
func (g *Group) Refuse(reason int) { g.refused[reason].Add(1) }

// RefuseDial counts a failed dial: a policy refusal if err says so.
func (g *Group) RefuseDial(err error) {
	if errors.Is(err, ErrNotAllowed) {
		g.Refuse(RefusedPolicy)
	} else {
		g.Refuse(RefusedDial)
	}
}

// AuthFailed counts a failed authentication.
func (g *Group) AuthFailed() { g.authFailures.Add(1) }

// Init prepares g for use.
func (g *Group) Init() {
	g.ctx, g.cancel = context.WithCancel(context.Background())
	g.conns = make(map[net.Conn]struct{})
	g.closers = make(map[io.Closer]struct{})
}

// Context is canceled when g closes.
func (g *Group) Context() context.Context { return g.ctx }

// IsClosed reports whether Close was called.
func (g *Group) IsClosed() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closed
}

// AddConn tracks the client connection c; it reports false if the group
// is closed or already tracks limit connections. Either way it is
// counted in Stats.
func (g *Group) AddConn(c net.Conn, limit int) bool {
	if !track(g, g.conns, c, limit) {
		g.Refuse(RefusedLimit)
		return false
	}
	g.accepted.Add(1)
	return true
}

// RemoveConn forgets c.
func (g *Group) RemoveConn(c net.Conn) { untrack(g, g.conns, c) }

// AddCloser tracks c (a listener, an upstream connection), which Close
// will close; it reports false if the group is closed.
func (g *Group) AddCloser(c io.Closer) bool { return track(g, g.closers, c, math.MaxInt) }

// RemoveCloser forgets c.
func (g *Group) RemoveCloser(c io.Closer) { untrack(g, g.closers, c) }

// track adds v to set, one of g's, unless g is closed or set holds limit
// entries.
func track[K comparable](g *Group, set map[K]struct{}, v K, limit int) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed || len(set) >= limit {
		return false
	}
	set[v] = struct{}{}
	return true
}

func untrack[K comparable](g *Group, set map[K]struct{}, v K) {
	g.mu.Lock()
	delete(set, v)
	g.mu.Unlock()
}

// Enter counts the caller's goroutine, which must then call Exit; it
// reports false, counting nothing, if the group is closed.
func (g *Group) Enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.wg.Add(1)
	return true
}

// Exit ends what Enter counted.
func (g *Group) Exit() { g.wg.Done() }

// Spawn runs f on a new goroutine counted in g; it reports false, running
// nothing, if the group is closed.
func (g *Group) Spawn(f func()) bool {
	if !g.Enter() {
		return false
	}
	go func() {
		defer g.wg.Done()
		f()
	}()
	return true
}

// Close marks the group closed, cancels its context, runs also (if not nil, once),
// closes the listeners and connections, and waits for the goroutines.
func (g *Group) Close(also func()) {
	g.mu.Lock()
	first := !g.closed
	g.closed = true
	var closers []io.Closer
	for c := range g.conns {
		closers = append(closers, c)
	}
	for c := range g.closers {
		closers = append(closers, c)
	}
	g.mu.Unlock()
	if first {
		g.cancel()
		if also != nil {
			also()
		}
		for _, c := range closers {
			c.Close()
		}
	}
	g.wg.Wait()
}

// Relay copies between a and b in both directions until both are
// done, passing on half-closes, then closes both. A failure in either
// direction closes both, which ends the other. spawn runs the second
// direction.
func Relay(a, b net.Conn, spawn func(func()) bool) {
	closeBoth := func() {
		a.Close()
		b.Close()
	}
	// An error on either side (a reset, a tunnel that went down) resets
	// both, so the program sees a broken connection, not a clean end of
	// stream that could pass for a complete response.
	resetBoth := func() {
		for _, c := range []net.Conn{a, b} {
			if l, ok := c.(interface{ SetLinger(int) error }); ok {
				l.SetLinger(0)
			}
		}
		closeBoth()
	}
	done := make(chan struct{})
	if !spawn(func() {
		defer close(done)
		if halfCopy(b, a) != nil {
			resetBoth()
		}
	}) {
		closeBoth()
		return
	}
	if halfCopy(a, b) != nil {
		resetBoth()
	}
	<-done
	closeBoth()
}

// halfCopy copies src to dst until src's EOF, then half-closes dst. It
// returns an error if copying failed or dst cannot be half-closed.
func halfCopy(dst, src net.Conn) error {
	if _, err := io.Copy(dst, src); err != nil {
		return err
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// RateLimit returns a Logf for per-connection paths: at most 5 lines a
// second (bursts of 20) reach logf. A nil logf discards everything.
func RateLimit(logf logger.Logf) logger.Logf {
	if logf == nil {
		return logger.Discard
	}
	return logger.RateLimit(logf, 5, 20)
}

// Or returns v if it is positive, else def: the zero value of a setting
// (or a negative one) means its default.
func Or[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// IsTemporary reports whether an Accept error is worth retrying.
func IsTemporary(err error) bool {
	var te interface{ Temporary() bool }
	return errors.As(err, &te) && te.Temporary()
}

// IsTimeout reports whether err is a deadline or timeout.
func IsTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout())
}

// The dial errors below are errnos, from host sockets and from the
// tunnels' stacks alike (netstack's dial turns its errors into them).

// IsRefused reports a refused connection.
func IsRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// IsNetUnreachable reports an unreachable network.
func IsNetUnreachable(err error) bool { return errors.Is(err, syscall.ENETUNREACH) }

// IsHostUnreachable reports an unreachable host, or a name that does not
// exist.
func IsHostUnreachable(err error) bool {
	var dnsErr *net.DNSError
	return errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.EHOSTDOWN) || (errors.As(err, &dnsErr) && dnsErr.IsNotFound)
}
