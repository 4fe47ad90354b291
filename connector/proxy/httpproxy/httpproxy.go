// Package httpproxy is an HTTP/1.1 forward proxy (CONNECT tunnels and
// absolute-URI requests) whose every outbound connection goes through a
// netx.DialFunc: appconnector's client sidecar serves it with the
// client's DialContext.
package httpproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/appconnector/appconnector/connector/logger"
	"github.com/appconnector/appconnector/connector/netx"
	"github.com/appconnector/appconnector/connector/proxy"
)

// Server is an HTTP/1.1 forward proxy: CONNECT host:port tunnels, and
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
type Server struct {
	// Dial opens every outbound connection ("tcp"). Required.
	Dial netx.DialFunc

	// DialTimeout bounds each dial. Zero means 10 s.
	DialTimeout time.Duration

	// MaxConns caps concurrent client connections; a connection beyond
	// the cap is closed as soon as it is accepted. Zero means 1024.
	MaxConns int

	// Logf receives diagnostics, rate-limited. Nil discards them.
	Logf logger.Logf

	initOnce  sync.Once
	g         proxy.Group
	logf      logger.Logf // rate-limited Logf
	srv       *http.Server
	transport *http.Transport        // for absolute-URI requests
	rp        *httputil.ReverseProxy // forwards them
}

// Timeouts of the HTTP proxy besides DialTimeout.
const (
	httpProxyHeaderTimeout = 30 * time.Second // a client's request header
	httpProxyIdleTimeout   = 2 * time.Minute  // a keep-alive client connection between requests
	httpProxyUpstreamIdle  = 90 * time.Second // a pooled upstream connection
)

func (p *Server) init() {
	p.initOnce.Do(func() {
		p.g.Init()
		p.logf = proxy.RateLimit(p.Logf)
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
		// The request already names its upstream (an absolute URI):
		// Rewrite keeps it, and adds no X-Forwarded-* header.
		// ReverseProxy drops hop-by-hop headers both ways (keeping an
		// Upgrade the client asked for, whose connection it then
		// relays), flushes streamed bodies as they come, and aborts the
		// client's response if the upstream fails mid-body.
		p.rp = &httputil.ReverseProxy{
			Rewrite:      func(*httputil.ProxyRequest) {},
			Transport:    p.transport,
			ErrorLog:     log.New(logWriter(p.logf), "", 0),
			ErrorHandler: p.dialFailed,
		}
		p.srv = &http.Server{
			Handler:           http.HandlerFunc(p.serveHTTP),
			ReadHeaderTimeout: httpProxyHeaderTimeout,
			IdleTimeout:       httpProxyIdleTimeout,
			ErrorLog:          log.New(logWriter(p.logf), "", 0),
			BaseContext:       func(net.Listener) context.Context { return p.g.Context() },
		}
	})
}

func (p *Server) dialUpstream(ctx context.Context, network, address string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, proxy.Or(p.DialTimeout, proxy.DefaultDialTimeout))
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
func (p *Server) dialPooled(ctx context.Context, network, address string) (net.Conn, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(p.g.Context(), cancel)()
	c, err := p.dialUpstream(ctx, network, address)
	if err != nil {
		return nil, err
	}
	pc := &pooledConn{Conn: c, g: &p.g}
	if !p.g.AddCloser(pc) {
		c.Close()
		return nil, fmt.Errorf("dial %s: proxy closed", address)
	}
	return pc, nil
}

// pooledConn is an upstream conn of the transport, tracked so that Close
// closes it wherever it is.
type pooledConn struct {
	net.Conn
	g    *proxy.Group
	once sync.Once
}

var _ net.Conn = (*pooledConn)(nil)

func (c *pooledConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.g.RemoveCloser(c) })
	return err
}

// Serve accepts proxy clients on ln until ln fails or Close is called.
// Serve owns ln and closes it before returning. It returns nil after Close
// (also when called after Close), otherwise the error that ended it.
func (p *Server) Serve(ln net.Listener) error {
	p.init()
	if p.Dial == nil {
		ln.Close()
		return errors.New("httpproxy: Dial is nil")
	}
	if p.g.IsClosed() {
		ln.Close()
		return nil
	}
	err := p.srv.Serve(&httpProxyListener{Listener: ln, p: p})
	if errors.Is(err, http.ErrServerClosed) || p.g.IsClosed() {
		return nil
	}
	return fmt.Errorf("httpproxy: serve on %v: %w", ln.Addr(), err)
}

// Stats returns the proxy's counters.
func (p *Server) Stats() proxy.Stats {
	p.init()
	return p.g.Stats()
}

// Close closes every listener given to Serve, every client connection
// (tunnels included) and every upstream connection, cancels requests and
// dials in progress, and waits for every handler and tunnel goroutine
// (net/http's own per-connection goroutines exit as their connections
// close). It is idempotent and always returns nil; a second call also
// waits.
func (p *Server) Close() error {
	p.init()
	p.g.Close(func() { p.srv.Close() })
	p.transport.CloseIdleConnections()
	return nil
}

// httpProxyListener enforces MaxConns and tracks connections so that Close
// reaches hijacked ones too.
type httpProxyListener struct {
	net.Listener
	p *Server
}

var _ net.Listener = (*httpProxyListener)(nil)

func (l *httpProxyListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		pc := &httpProxyConn{Conn: c, p: l.p}
		if l.p.g.AddConn(pc, proxy.Or(l.p.MaxConns, proxy.DefaultMaxConns)) {
			return pc, nil
		}
		c.Close()
		l.p.logf("httpproxy: refused %v: closed or at %d connections", c.RemoteAddr(), proxy.Or(l.p.MaxConns, proxy.DefaultMaxConns))
	}
}

// httpProxyConn is an accepted client connection; closing it releases its
// MaxConns slot.
type httpProxyConn struct {
	net.Conn
	p    *Server
	once sync.Once
}

var _ net.Conn = (*httpProxyConn)(nil)

func (c *httpProxyConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.p.g.RemoveConn(c) })
	return err
}

func (c *httpProxyConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

func (p *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if !p.g.Enter() {
		http.Error(w, "proxy is closed", http.StatusServiceUnavailable)
		return
	}
	defer p.g.Exit()
	if r.Method == http.MethodConnect {
		p.serveConnect(w, r)
		return
	}
	if !r.URL.IsAbs() || r.URL.Scheme != "http" || r.URL.Host == "" {
		p.g.Refuse(proxy.RefusedRequest)
		http.Error(w, "this is a proxy: send CONNECT host:port or a request with an absolute http:// URI", http.StatusBadRequest)
		return
	}
	p.rp.ServeHTTP(w, r)
}

// serveConnect dials the CONNECT target, then answers 200 and tunnels
// bytes, or answers with an error status if the dial fails.
func (p *Server) serveConnect(w http.ResponseWriter, r *http.Request) {
	target := r.URL.Host
	if !validHostPort(target) {
		p.g.Refuse(proxy.RefusedRequest)
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
	proxy.Relay(inner, out, p.g.Spawn)
}

// dialFailed answers a failed dial: 403 for proxy.ErrNotAllowed, 504 for a
// timeout, else 502.
func (p *Server) dialFailed(w http.ResponseWriter, r *http.Request, err error) {
	p.g.RefuseDial(err)
	code := http.StatusBadGateway
	switch {
	case errors.Is(err, proxy.ErrNotAllowed):
		code = http.StatusForbidden
	case proxy.IsTimeout(err):
		code = http.StatusGatewayTimeout
	}
	p.logf("httpproxy: %v: %s %s: %v", r.RemoteAddr, r.Method, r.URL.Host, err)
	http.Error(w, fmt.Sprintf("%d %s: %v", code, http.StatusText(code), err), code)
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

// logWriter adapts a Logf to the io.Writer of net/http's log.Logger.
type logWriter logger.Logf

func (f logWriter) Write(b []byte) (int, error) {
	f("httpproxy: %s", strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}
