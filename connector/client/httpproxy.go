package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/time/rate"
)

// HTTPProxy is an HTTP/1.1 forward proxy: CONNECT host:port tunnels, and
// plain requests with an absolute URI (GET http://host/path ...), so that
// HTTP_PROXY, HTTPS_PROXY and ALL_PROXY work for curl, Go, Python and Node
// clients. Absolute-URI requests are forwarded over pooled keep-alive
// connections with hop-by-hop headers removed in both directions; any other
// request is answered 400. There is no proxy authentication.
//
// Every outbound connection goes through Dial; the proxy never resolves a
// name or dials on its own. Set the fields before the first call to Serve
// and do not change them afterwards. Serve may be called for several
// listeners at once, and Serve and Close are safe to call concurrently.
type HTTPProxy struct {
	// Dial opens every outbound connection ("tcp"). Required.
	Dial DialFunc

	// DialTimeout bounds each dial. Zero means 10 s.
	DialTimeout time.Duration

	// MaxConns caps concurrent client connections; a connection beyond
	// the cap is closed as soon as it is accepted. Zero means 1024.
	MaxConns int

	// Logf receives diagnostics, rate-limited. Nil discards them.
	Logf func(format string, args ...any)

	initOnce  sync.Once
	g         proxyGroup
	logf      func(format string, args ...any) // rate-limited Logf
	srv       *http.Server
	transport *http.Transport // for absolute-URI requests
}

// Timeouts of the HTTP proxy besides DialTimeout.
const (
	httpProxyHeaderTimeout = 30 * time.Second // a client's request header
	httpProxyIdleTimeout   = 2 * time.Minute  // a keep-alive client connection between requests
	httpProxyUpstreamIdle  = 90 * time.Second // a pooled upstream connection
)

func (p *HTTPProxy) init() {
	p.initOnce.Do(func() {
		p.g.init()
		p.logf = newProxyLogf(p.Logf)
		p.transport = &http.Transport{
			Proxy:                 nil, // never from the environment
			DialContext:           p.dialPooled,
			DisableCompression:    true, // pass bytes through as they are
			ForceAttemptHTTP2:     false,
			MaxIdleConns:          64,
			MaxIdleConnsPerHost:   8,
			IdleConnTimeout:       httpProxyUpstreamIdle,
			TLSHandshakeTimeout:   10 * time.Second,
			ExpectContinueTimeout: time.Second,
			// No ResponseHeaderTimeout: long polls are legitimate; the
			// client decides how long to wait.
		}
		p.srv = &http.Server{
			Handler:           http.HandlerFunc(p.serveHTTP),
			ReadHeaderTimeout: httpProxyHeaderTimeout,
			IdleTimeout:       httpProxyIdleTimeout,
			ErrorLog:          log.New(logfWriter(p.logf), "", 0),
			BaseContext:       func(net.Listener) context.Context { return p.g.ctx },
		}
	})
}

func (p *HTTPProxy) dialUpstream(ctx context.Context, network, address string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, durationOr(p.DialTimeout, defaultProxyDialTimeout))
	defer cancel()
	c, err := p.Dial(ctx, network, address)
	if err == nil && c == nil {
		err = errors.New("dial returned no connection")
	}
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", address, err)
	}
	return c, nil
}

// dialPooled is the transport's dial. Its conns may sit in the idle pool
// and its dials outlive the request that started them, so it is tied to
// Close: the dial is canceled and the conns are closed by it.
func (p *HTTPProxy) dialPooled(ctx context.Context, network, address string) (net.Conn, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(p.g.ctx, cancel)()
	c, err := p.dialUpstream(ctx, network, address)
	if err != nil {
		return nil, err
	}
	pc := &pooledConn{Conn: c, g: &p.g}
	if !p.g.addOther(pc) {
		c.Close()
		return nil, fmt.Errorf("dial %s: proxy closed", address)
	}
	return pc, nil
}

// pooledConn is an upstream conn of the transport, tracked so that Close
// closes it wherever it is.
type pooledConn struct {
	net.Conn
	g    *proxyGroup
	once sync.Once
}

var _ net.Conn = (*pooledConn)(nil)

func (c *pooledConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.g.removeOther(c) })
	return err
}

// Serve accepts proxy clients on ln until ln fails or Close is called.
// Serve owns ln and closes it before returning. It returns nil after Close
// (also when called after Close), otherwise the error that ended it.
func (p *HTTPProxy) Serve(ln net.Listener) error {
	p.init()
	if p.Dial == nil {
		ln.Close()
		return errors.New("httpproxy: Dial is nil")
	}
	if p.g.isClosed() {
		ln.Close()
		return nil
	}
	err := p.srv.Serve(&httpProxyListener{Listener: ln, p: p})
	if errors.Is(err, http.ErrServerClosed) || p.g.isClosed() {
		return nil
	}
	return fmt.Errorf("httpproxy: serve on %v: %w", ln.Addr(), err)
}

// Close closes every listener given to Serve, every client connection
// (tunnels included) and every upstream connection, cancels requests and
// dials in progress, and waits for every handler and tunnel goroutine
// (net/http's own per-connection goroutines exit as their connections
// close). It is idempotent and always returns nil; a second call also
// waits.
func (p *HTTPProxy) Close() error {
	p.init()
	p.g.close(func() { p.srv.Close() })
	p.transport.CloseIdleConnections()
	return nil
}

// httpProxyListener enforces MaxConns and tracks connections so that Close
// reaches hijacked ones too.
type httpProxyListener struct {
	net.Listener
	p *HTTPProxy
}

var _ net.Listener = (*httpProxyListener)(nil)

func (l *httpProxyListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		pc := &httpProxyConn{Conn: c, p: l.p}
		if l.p.g.addConn(pc, intOr(l.p.MaxConns, defaultProxyMaxConns)) {
			return pc, nil
		}
		c.Close()
		l.p.logf("httpproxy: refused %v: closed or at %d connections", c.RemoteAddr(), intOr(l.p.MaxConns, defaultProxyMaxConns))
	}
}

// httpProxyConn is an accepted client connection; closing it releases its
// MaxConns slot.
type httpProxyConn struct {
	net.Conn
	p    *HTTPProxy
	once sync.Once
}

var _ net.Conn = (*httpProxyConn)(nil)

func (c *httpProxyConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.p.g.removeConn(c) })
	return err
}

func (c *httpProxyConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

func (p *HTTPProxy) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if !p.g.enter() {
		http.Error(w, "proxy is closed", http.StatusServiceUnavailable)
		return
	}
	defer p.g.wg.Done()
	if r.Method == http.MethodConnect {
		p.serveConnect(w, r)
		return
	}
	if !r.URL.IsAbs() || r.URL.Scheme != "http" || r.URL.Host == "" {
		http.Error(w, "this is a proxy: send CONNECT host:port or a request with an absolute http:// URI", http.StatusBadRequest)
		return
	}
	p.forward(w, r)
}

// serveConnect dials the CONNECT target, then answers 200 and tunnels
// bytes, or answers with an error status if the dial fails.
func (p *HTTPProxy) serveConnect(w http.ResponseWriter, r *http.Request) {
	target := r.URL.Host
	if !validHostPort(target) {
		http.Error(w, "CONNECT target must be host:port", http.StatusBadRequest)
		return
	}
	out, err := p.dialUpstream(r.Context(), "tcp", target)
	if err != nil {
		p.dialFailed(w, r, err)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		out.Close()
		http.Error(w, "cannot tunnel on this connection", http.StatusInternalServerError)
		return
	}
	c, brw, err := hj.Hijack()
	if err != nil {
		out.Close()
		return
	}
	defer c.Close()
	c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		out.Close()
		return
	}
	// The server may have read tunnel bytes the client sent early.
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		if _, err := out.Write(b); err != nil {
			out.Close()
			return
		}
	}
	inner := c
	if pc, ok := c.(*httpProxyConn); ok {
		inner = pc.Conn // lets io.Copy splice between the sockets
	}
	proxyRelay(inner, out, p.g.spawn)
}

// dialFailed answers a failed dial: 403 for ErrNotAllowed, 504 for a
// timeout, else 502.
func (p *HTTPProxy) dialFailed(w http.ResponseWriter, r *http.Request, err error) {
	code := http.StatusBadGateway
	switch {
	case errors.Is(err, ErrNotAllowed):
		code = http.StatusForbidden
	case isTimeout(err):
		code = http.StatusGatewayTimeout
	}
	p.logf("httpproxy: %v: %s %s: %v", r.RemoteAddr, r.Method, r.URL.Host, err)
	http.Error(w, fmt.Sprintf("%d %s: %v", code, http.StatusText(code), err), code)
}

// forward sends an absolute-URI request upstream and streams the response.
func (p *HTTPProxy) forward(w http.ResponseWriter, r *http.Request) {
	out := r.Clone(r.Context())
	out.RequestURI = ""
	out.Close = false // the client's Connection: close is not the upstream's
	removeHopByHop(out.Header)
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header.Set("User-Agent", "") // keep Go from adding its own
	}
	resp, err := p.transport.RoundTrip(out)
	if err != nil {
		p.dialFailed(w, r, err)
		return
	}
	defer resp.Body.Close()
	removeHopByHop(resp.Header)
	h := w.Header()
	for k, vv := range resp.Header {
		h[k] = vv
	}
	w.WriteHeader(resp.StatusCode)
	if resp.ContentLength < 0 {
		// A stream or long poll may send its header well before its body.
		http.NewResponseController(w).Flush()
	}
	if err := copyResponseBody(w, resp); err != nil {
		if r.Context().Err() == nil {
			// The upstream failed mid-body: abort so that the client
			// sees a broken response, not a complete one.
			panic(http.ErrAbortHandler)
		}
		return
	}
	for k, vv := range resp.Trailer {
		h[http.TrailerPrefix+k] = vv
	}
}

// copyResponseBody streams resp.Body to w, flushing after each write when
// the length is unknown (streams, server-sent events). Write errors (the
// client went away) are not reported.
func copyResponseBody(w http.ResponseWriter, resp *http.Response) error {
	flush := resp.ContentLength < 0
	rc := http.NewResponseController(w)
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return nil
			}
			if flush {
				rc.Flush()
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// hopByHop are the headers that describe one connection, not the message.
var hopByHop = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// removeHopByHop deletes hop-by-hop headers from h, including those that
// the Connection header names.
func removeHopByHop(h http.Header) {
	for _, v := range h["Connection"] {
		for _, name := range strings.Split(v, ",") {
			if name = textproto.TrimString(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range hopByHop {
		h.Del(name)
	}
}

// validHostPort reports whether s is "host:port" with a non-empty host and
// a port in 1..65535.
func validHostPort(s string) bool {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		return false
	}
	n, err := strconv.ParseUint(port, 10, 16)
	return err == nil && n > 0
}

// The rest of this file is shared by both proxies.

// DialFunc opens a connection for the proxies. address is "host:port" where
// host may be a hostname (resolved by the DialFunc, never by the proxy) or an
// IP literal (IPv6 in brackets). network is "tcp" or "udp". ctx carries the
// dial deadline and is canceled when the proxy closes; the returned conn
// belongs to the proxy, which closes it. A DialFunc is called from many
// goroutines at once and must be safe for concurrent use.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// ErrNotAllowed is what a DialFunc returns (possibly wrapped) for a
// destination that policy refuses. The SOCKS5 server answers it with
// "connection not allowed by ruleset" (0x02) and the HTTP proxy with
// 403 Forbidden.
var ErrNotAllowed = errors.New("destination not allowed")

// Defaults shared by both proxies.
const (
	defaultProxyDialTimeout = 10 * time.Second
	defaultProxyMaxConns    = 1024
)

// proxyGroup is the lifecycle of one proxy: the context that Close
// cancels, the listeners and client connections that Close closes, and a
// WaitGroup over every goroutine the proxy starts.
type proxyGroup struct {
	ctx    context.Context // canceled by close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex // guards the fields after it
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}  // client connections, counted for MaxConns
	others    map[io.Closer]struct{} // anything else close must close
}

func (g *proxyGroup) init() {
	g.ctx, g.cancel = context.WithCancel(context.Background())
	g.listeners = make(map[net.Listener]struct{})
	g.conns = make(map[net.Conn]struct{})
	g.others = make(map[io.Closer]struct{})
}

func (g *proxyGroup) isClosed() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closed
}

// addListener tracks ln; it reports false if the group is closed.
func (g *proxyGroup) addListener(ln net.Listener) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.listeners[ln] = struct{}{}
	return true
}

func (g *proxyGroup) removeListener(ln net.Listener) {
	g.mu.Lock()
	delete(g.listeners, ln)
	g.mu.Unlock()
}

// addConn tracks c; it reports false if the group is closed or already
// tracks limit connections.
func (g *proxyGroup) addConn(c net.Conn, limit int) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed || len(g.conns) >= limit {
		return false
	}
	g.conns[c] = struct{}{}
	return true
}

func (g *proxyGroup) removeConn(c net.Conn) {
	g.mu.Lock()
	delete(g.conns, c)
	g.mu.Unlock()
}

// addOther tracks c; it reports false if the group is closed.
func (g *proxyGroup) addOther(c io.Closer) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.others[c] = struct{}{}
	return true
}

func (g *proxyGroup) removeOther(c io.Closer) {
	g.mu.Lock()
	delete(g.others, c)
	g.mu.Unlock()
}

// enter counts the caller's goroutine in wg, which the caller must then
// mark Done; it reports false, counting nothing, if the group is closed.
func (g *proxyGroup) enter() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.wg.Add(1)
	return true
}

// spawn runs f on a new goroutine counted in wg; it reports false, running
// nothing, if the group is closed.
func (g *proxyGroup) spawn(f func()) bool {
	if !g.enter() {
		return false
	}
	go func() {
		defer g.wg.Done()
		f()
	}()
	return true
}

// close marks the group closed, cancels ctx, runs also (if not nil, once),
// closes the listeners and connections, and waits for the goroutines.
func (g *proxyGroup) close(also func()) {
	g.mu.Lock()
	first := !g.closed
	g.closed = true
	var closers []io.Closer
	for ln := range g.listeners {
		closers = append(closers, ln)
	}
	for c := range g.conns {
		closers = append(closers, c)
	}
	for c := range g.others {
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

// proxyRelay copies between a and b in both directions until both are
// done, passing on half-closes, then closes both. A failure in either
// direction closes both, which ends the other. spawn runs the second
// direction.
func proxyRelay(a, b net.Conn, spawn func(func()) bool) {
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

// newProxyLogf returns a Logf for per-connection paths: at most 5 lines a
// second (bursts of 20) reach logf, and the number dropped is reported with
// the next line that passes. A nil logf discards everything.
func newProxyLogf(logf func(format string, args ...any)) func(format string, args ...any) {
	if logf == nil {
		return func(string, ...any) {}
	}
	lim := rate.NewLimiter(5, 20)
	var dropped atomic.Int64
	return func(format string, args ...any) {
		if !lim.Allow() {
			dropped.Add(1)
			return
		}
		msg := fmt.Sprintf(format, args...)
		if n := dropped.Swap(0); n > 0 {
			msg += fmt.Sprintf(" (%d lines dropped)", n)
		}
		logf("%s", msg)
	}
}

// logfWriter adapts a Logf to the io.Writer of a log.Logger.
type logfWriter func(format string, args ...any)

func (f logfWriter) Write(b []byte) (int, error) {
	f("httpproxy: %s", strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

func durationOr(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

func intOr(n, def int) int {
	if n <= 0 {
		return def
	}
	return n
}

// isTemporary reports whether an Accept error is worth retrying.
func isTemporary(err error) bool {
	var te interface{ Temporary() bool }
	return errors.As(err, &te) && te.Temporary()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout())
}

// The dial errors below are errnos, from host sockets and from the
// tunnels' stacks alike (netstack's dial turns its errors into them).

func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

func isNetUnreachable(err error) bool { return errors.Is(err, syscall.ENETUNREACH) }

func isHostUnreachable(err error) bool {
	var dnsErr *net.DNSError
	return errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.EHOSTDOWN) || (errors.As(err, &dnsErr) && dnsErr.IsNotFound)
}
