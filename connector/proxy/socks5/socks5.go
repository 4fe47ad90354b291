// Package socks5 is a SOCKS5 server (RFC 1928: CONNECT and UDP ASSOCIATE,
// with optional RFC 1929 authentication) whose every outbound connection
// goes through a netx.DialFunc: appconnector's client sidecar serves it
// with the client's DialContext.
package socks5

import (
	"context"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/appconnector/appconnector/connector/logger"
	"github.com/appconnector/appconnector/connector/netx"
	"github.com/appconnector/appconnector/connector/proxy"
)

// SOCKS5 wire constants (RFC 1928, RFC 1929).
const (
	socksVersion     = 5
	socksAuthVersion = 1

	socksMethodNone         = 0x00
	socksMethodUserPass     = 0x02
	socksMethodNoAcceptable = 0xff

	socksCmdConnect      = 0x01
	socksCmdUDPAssociate = 0x03

	socksAtypIPv4   = 0x01
	socksAtypDomain = 0x03
	socksAtypIPv6   = 0x04

	socksRepSucceeded        = 0x00
	socksRepGeneralFailure   = 0x01
	socksRepNotAllowed       = 0x02
	socksRepNetUnreachable   = 0x03
	socksRepHostUnreachable  = 0x04
	socksRepConnRefused      = 0x05
	socksRepTTLExpired       = 0x06
	socksRepCmdNotSupported  = 0x07
	socksRepAtypNotSupported = 0x08
)

const (
	socksMaxUDPDests  = 256   // destinations per UDP association
	socksMaxDatagram  = 65535 // largest UDP payload read on either side
	socksUDPHeaderMax = 3 + 1 + 1 + 255 + 2

	defaultSOCKSHandshake      = 10 * time.Second
	defaultSOCKSUDPIdleTimeout = 2 * time.Minute
)

// Server is a SOCKS version 5 proxy (RFC 1928): CONNECT with IPv4,
// IPv6 or domain-name addresses, and UDP ASSOCIATE, with optional
// username/password authentication (RFC 1929). BIND is not supported.
//
// Every outbound connection goes through Dial; the server never resolves a
// name or dials on its own. Set the fields before the first call to Serve
// and do not change them afterwards. Serve may be called for several
// listeners at once, and Serve and Close are safe to call concurrently.
type Server struct {
	// Dial opens the outbound connections ("tcp" for CONNECT, "udp" for
	// each UDP destination). Required.
	Dial netx.DialFunc

	// Username and Password, when either is set, make username/password
	// authentication (method 0x02) the only method accepted. When both are
	// empty only "no authentication" (0x00) is accepted. With
	// authentication on, a UDP ASSOCIATE must name the port the client
	// will send from (its address may be zeros: the client's TCP address
	// is taken); 0.0.0.0:0 is refused (reply 0x02), since any process on
	// the client's host could otherwise take the association.
	Username, Password string

	// DialTimeout bounds each CONNECT dial and each UDP destination dial.
	// Zero means 10 s.
	DialTimeout time.Duration

	// HandshakeTimeout is how long a client has to finish its greeting,
	// authentication and request. Zero means 10 s.
	HandshakeTimeout time.Duration

	// UDPIdleTimeout ends a UDP association (and closes its control
	// connection) after this long without a relayed datagram; a single
	// destination of an association is dropped after the same idle time.
	// Zero means 2 min.
	UDPIdleTimeout time.Duration

	// MaxConns caps concurrent client connections (a UDP association
	// counts as its control connection). A connection beyond the cap is
	// closed as soon as it is accepted. Zero means 1024.
	MaxConns int

	// Logf receives diagnostics, rate-limited. Nil discards them.
	Logf logger.Logf

	initOnce sync.Once
	g        proxy.Group
	logf     logger.Logf // rate-limited Logf
}

func (s *Server) init() {
	s.initOnce.Do(func() {
		s.g.Init()
		s.logf = proxy.RateLimit(s.Logf)
	})
}

func (s *Server) dialTimeout() time.Duration {
	return proxy.Or(s.DialTimeout, proxy.DefaultDialTimeout)
}

func (s *Server) handshakeTimeout() time.Duration {
	return proxy.Or(s.HandshakeTimeout, defaultSOCKSHandshake)
}

// reply writes the reply to a request, within HandshakeTimeout.
func (s *Server) reply(c net.Conn, rep byte, bnd net.Addr) error {
	c.SetWriteDeadline(time.Now().Add(s.handshakeTimeout()))
	defer c.SetWriteDeadline(time.Time{})
	return writeSOCKSReply(c, rep, bnd)
}

// authRequired reports whether clients must authenticate.
func (s *Server) authRequired() bool { return s.Username != "" || s.Password != "" }

func (s *Server) udpIdleTimeout() time.Duration {
	return proxy.Or(s.UDPIdleTimeout, defaultSOCKSUDPIdleTimeout)
}

// Serve accepts SOCKS5 clients on ln until ln fails or Close is called.
// Serve owns ln and closes it before returning. It returns nil after Close
// (also when called after Close), otherwise the error that ended it.
// Connections it accepted live on after an external ln.Close, until
// they end or Close is called.
func (s *Server) Serve(ln net.Listener) error {
	s.init()
	if s.Dial == nil {
		ln.Close()
		return errors.New("socks5: Dial is nil")
	}
	if !s.g.AddCloser(ln) {
		ln.Close()
		return nil
	}
	defer s.g.RemoveCloser(ln)
	defer ln.Close()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.g.IsClosed() {
				return nil
			}
			if !proxy.IsTemporary(err) {
				return fmt.Errorf("socks5: accept on %v: %w", ln.Addr(), err)
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.logf("socks5: accept on %v: %v; retrying in %v", ln.Addr(), err, backoff)
			select {
			case <-time.After(backoff):
			case <-s.g.Context().Done():
			}
			continue
		}
		backoff = 0
		s.startConn(c)
	}
}

// Stats returns the server's counters.
func (s *Server) Stats() proxy.Stats {
	s.init()
	return s.g.Stats()
}

// Close closes every listener given to Serve and every client connection
// and UDP association, cancels dials in progress, and waits for every
// goroutine the server started. It is idempotent and always returns nil;
// a second call also waits.
func (s *Server) Close() error {
	s.init()
	s.g.Close(nil)
	return nil
}

// startConn serves c on a new goroutine, or closes c at once when the
// server is closed or at MaxConns.
func (s *Server) startConn(c net.Conn) {
	if !s.g.AddConn(c, proxy.Or(s.MaxConns, proxy.DefaultMaxConns)) {
		c.Close()
		s.logf("socks5: refused %v: closed or at %d connections", c.RemoteAddr(), proxy.Or(s.MaxConns, proxy.DefaultMaxConns))
		return
	}
	ok := s.g.Spawn(func() {
		defer s.g.RemoveConn(c)
		defer c.Close()
		s.serveConn(c)
	})
	if !ok {
		s.g.RemoveConn(c)
		c.Close()
	}
}

// socksReplyError is a handshake failure answered with reply code rep
// before the connection is closed.
type socksReplyError struct {
	rep byte
	err error
}

func (e *socksReplyError) Error() string { return e.err.Error() }
func (e *socksReplyError) Unwrap() error { return e.err }

// serveConn runs one client connection to its end. The caller closes c.
func (s *Server) serveConn(c net.Conn) {
	c.SetDeadline(time.Now().Add(s.handshakeTimeout()))
	cmd, dst, err := s.handshake(c)
	if err != nil {
		if re := (*socksReplyError)(nil); errors.As(err, &re) {
			writeSOCKSReply(c, re.rep, nil)
		}
		if errors.Is(err, errAuthFailed) {
			s.g.AuthFailed()
		} else {
			s.g.Refuse(proxy.RefusedRequest)
		}
		s.logf("socks5: %v: %v", c.RemoteAddr(), err)
		return
	}
	c.SetDeadline(time.Time{})
	switch cmd {
	case socksCmdConnect:
		s.connect(c, dst)
	case socksCmdUDPAssociate:
		s.associate(c, dst)
	}
}

// handshake reads the greeting, authenticates and reads the request. It
// returns the command (CONNECT or UDP ASSOCIATE) and its address. It never
// reads past the request, so data the client pipelines after it is left
// in c.
func (s *Server) handshake(c net.Conn) (cmd byte, dst socksAddr, err error) {
	var hdr [2]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return 0, dst, fmt.Errorf("read greeting: %w", err)
	}
	if hdr[0] != socksVersion {
		return 0, dst, fmt.Errorf("greeting: version %d, want 5", hdr[0])
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(c, methods); err != nil {
		return 0, dst, fmt.Errorf("read greeting: %w", err)
	}
	want := byte(socksMethodNone)
	if s.authRequired() {
		want = socksMethodUserPass
	}
	chosen := byte(socksMethodNoAcceptable)
	for _, m := range methods {
		if m == want {
			chosen = want
		}
	}
	if _, err := c.Write([]byte{socksVersion, chosen}); err != nil {
		return 0, dst, fmt.Errorf("write method: %w", err)
	}
	if chosen == socksMethodNoAcceptable {
		return 0, dst, fmt.Errorf("greeting: no acceptable method among %x", methods)
	}
	if chosen == socksMethodUserPass {
		if err := s.authenticate(c); err != nil {
			return 0, dst, err
		}
	}

	var req [4]byte // VER CMD RSV ATYP
	if _, err := io.ReadFull(c, req[:]); err != nil {
		return 0, dst, fmt.Errorf("read request: %w", err)
	}
	if req[0] != socksVersion {
		return 0, dst, fmt.Errorf("request: version %d, want 5", req[0])
	}
	dst, err = readSOCKSAddr(c, req[3])
	switch {
	case errors.Is(err, errSOCKSAtyp):
		return 0, dst, &socksReplyError{socksRepAtypNotSupported, fmt.Errorf("request: %w", err)}
	case errors.Is(err, errSOCKSName):
		return 0, dst, &socksReplyError{socksRepHostUnreachable, fmt.Errorf("request: %w", err)}
	case err != nil:
		return 0, dst, fmt.Errorf("read request: %w", err)
	}
	if req[1] != socksCmdConnect && req[1] != socksCmdUDPAssociate {
		return 0, dst, &socksReplyError{socksRepCmdNotSupported, fmt.Errorf("request: command %d not supported", req[1])}
	}
	return req[1], dst, nil
}

// errAuthFailed is a client's wrong username or password.
var errAuthFailed = errors.New("wrong username or password")

// authenticate runs the RFC 1929 username/password subnegotiation.
func (s *Server) authenticate(c net.Conn) error {
	var b [1 + 1 + 255 + 1 + 255]byte
	if _, err := io.ReadFull(c, b[:2]); err != nil {
		return fmt.Errorf("read auth: %w", err)
	}
	if b[0] != socksAuthVersion {
		c.Write([]byte{socksAuthVersion, 0x01})
		return fmt.Errorf("auth: version %d, want 1", b[0])
	}
	ulen := int(b[1])
	if _, err := io.ReadFull(c, b[2:2+ulen+1]); err != nil {
		return fmt.Errorf("read auth: %w", err)
	}
	user := b[2 : 2+ulen]
	plen := int(b[2+ulen])
	pass := b[3+ulen : 3+ulen+plen]
	if _, err := io.ReadFull(c, pass); err != nil {
		return fmt.Errorf("read auth: %w", err)
	}
	okUser := subtle.ConstantTimeCompare(user, []byte(s.Username))
	okPass := subtle.ConstantTimeCompare(pass, []byte(s.Password))
	if okUser&okPass != 1 {
		c.Write([]byte{socksAuthVersion, 0x01})
		return fmt.Errorf("auth: %w", errAuthFailed)
	}
	if _, err := c.Write([]byte{socksAuthVersion, 0x00}); err != nil {
		return fmt.Errorf("write auth status: %w", err)
	}
	return nil
}

// connect serves CONNECT: dial first, then reply, then relay.
func (s *Server) connect(c net.Conn, dst socksAddr) {
	if dst.port == 0 {
		s.g.Refuse(proxy.RefusedRequest)
		s.reply(c, socksRepHostUnreachable, nil)
		return
	}
	ctx, cancel := context.WithTimeout(s.g.Context(), s.dialTimeout())
	out, err := s.Dial(ctx, "tcp", dst.String())
	cancel()
	if err == nil && out == nil {
		err = errors.New("dial returned no connection")
	}
	if err != nil {
		s.g.RefuseDial(err)
		s.reply(c, socksDialReply(err), nil)
		s.logf("socks5: %v: connect %v: %v", c.RemoteAddr(), dst, err)
		return
	}
	if err := s.reply(c, socksRepSucceeded, out.LocalAddr()); err != nil {
		out.Close()
		return
	}
	proxy.Relay(c, out, s.g.Spawn)
}

// socksDialReply maps a dial error to a SOCKS reply code.
func socksDialReply(err error) byte {
	switch {
	case errors.Is(err, proxy.ErrNotAllowed):
		return socksRepNotAllowed
	case proxy.IsRefused(err):
		return socksRepConnRefused
	case proxy.IsTimeout(err):
		return socksRepTTLExpired
	case proxy.IsNetUnreachable(err):
		return socksRepNetUnreachable
	case proxy.IsHostUnreachable(err):
		return socksRepHostUnreachable
	}
	return socksRepGeneralFailure
}

// writeSOCKSReply writes a reply with code rep. BND.ADDR and BND.PORT are
// bnd when it is a *net.TCPAddr or *net.UDPAddr, else 0.0.0.0:0.
func writeSOCKSReply(w io.Writer, rep byte, bnd net.Addr) error {
	var ap netip.AddrPort
	switch a := bnd.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	}
	ip, port := ap.Addr().Unmap(), ap.Port()
	b := make([]byte, 0, 4+16+2)
	b = append(b, socksVersion, rep, 0)
	switch {
	case ip.Is4():
		b = append(b, socksAtypIPv4)
	case ip.Is6():
		b = append(b, socksAtypIPv6)
	default:
		ip, port = netip.IPv4Unspecified(), 0
		b = append(b, socksAtypIPv4)
	}
	b = append(b, ip.AsSlice()...)
	b = binary.BigEndian.AppendUint16(b, port)
	_, err := w.Write(b)
	return err
}

var (
	errSOCKSAtyp  = errors.New("address type not supported")
	errSOCKSName  = errors.New("invalid domain name")
	errSOCKSShort = errors.New("truncated address")
)

// socksAddr is a destination as a client named it.
type socksAddr struct {
	ip   netip.Addr // set for IP addresses (and domain names that are IP literals)
	name string     // set for other domain names
	port uint16
}

// String returns the address as "host:port" for a DialFunc.
func (a socksAddr) String() string {
	host := a.name
	if a.ip.IsValid() {
		host = a.ip.String()
	}
	return net.JoinHostPort(host, strconv.Itoa(int(a.port)))
}

// readSOCKSAddr reads DST.ADDR and DST.PORT of address type atyp from r,
// reading exactly their length.
func readSOCKSAddr(r io.Reader, atyp byte) (socksAddr, error) {
	var buf [1 + 1 + 255 + 2]byte
	buf[0] = atyp
	start, n := 1, 0
	switch atyp {
	case socksAtypIPv4:
		n = 1 + 4 + 2
	case socksAtypIPv6:
		n = 1 + 16 + 2
	case socksAtypDomain:
		if _, err := io.ReadFull(r, buf[1:2]); err != nil {
			return socksAddr{}, err
		}
		start, n = 2, 2+int(buf[1])+2
	default:
		return socksAddr{}, fmt.Errorf("%w: %d", errSOCKSAtyp, atyp)
	}
	if _, err := io.ReadFull(r, buf[start:n]); err != nil {
		return socksAddr{}, err
	}
	a, _, err := parseSOCKSAddr(buf[:n])
	return a, err
}

// parseSOCKSAddr parses ATYP, DST.ADDR and DST.PORT at the start of b and
// returns the address and its encoded length.
func parseSOCKSAddr(b []byte) (a socksAddr, n int, err error) {
	if len(b) < 1 {
		return a, 0, errSOCKSShort
	}
	switch b[0] {
	case socksAtypIPv4:
		if n = 1 + 4 + 2; len(b) < n {
			return a, 0, errSOCKSShort
		}
		a.ip = netip.AddrFrom4([4]byte(b[1:5]))
	case socksAtypIPv6:
		if n = 1 + 16 + 2; len(b) < n {
			return a, 0, errSOCKSShort
		}
		a.ip = netip.AddrFrom16([16]byte(b[1:17])).Unmap()
	case socksAtypDomain:
		if len(b) < 2 {
			return a, 0, errSOCKSShort
		}
		l := int(b[1])
		if n = 2 + l + 2; len(b) < n {
			return a, 0, errSOCKSShort
		}
		name := string(b[2 : 2+l])
		if ip, err := netip.ParseAddr(name); err == nil && ip.Zone() == "" {
			a.ip = ip.Unmap()
		} else if validSOCKSName(name) {
			a.name = name
		} else {
			return a, 0, fmt.Errorf("%w: %q", errSOCKSName, name)
		}
	default:
		return a, 0, fmt.Errorf("%w: %d", errSOCKSAtyp, b[0])
	}
	a.port = binary.BigEndian.Uint16(b[n-2 : n])
	return a, n, nil
}

// validSOCKSName reports whether name looks like a DNS name: ASCII letters,
// digits, '-', '_' and '.', not empty and not starting with a dot. Anything
// else (':' or '%' in particular) could change the meaning of "host:port".
func validSOCKSName(name string) bool {
	if name == "" || name[0] == '.' {
		return false
	}
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_', c == '.':
		default:
			return false
		}
	}
	return true
}

// socksAssoc is one UDP ASSOCIATE relay. It lives as long as its control
// connection: ending either ends both.
type socksAssoc struct {
	s         *Server
	control   net.Conn
	pc        *net.UDPConn    // client-facing socket
	ctx       context.Context // canceled when the association ends
	cancel    context.CancelFunc
	clientIP  netip.Addr // only datagrams from this IP are relayed
	fixedPort uint16     // if not zero, only datagrams from this port
	start     time.Time
	lastUsed  atomic.Int64 // time.Since(start) of the last relayed datagram

	mu     sync.Mutex // guards the fields after it
	client netip.AddrPort
	dests  map[string]*socksUDPDest
	ended  bool
}

// socksUDPDest is one destination of an association, with its own
// connected UDP conn from Dial.
type socksUDPDest struct {
	key      string
	hdr      []byte   // SOCKS UDP header naming the destination, prefixed to replies
	conn     net.Conn // nil while dialing; set under socksAssoc.mu
	lastUsed atomic.Int64
}

// associate serves UDP ASSOCIATE on control until the association ends.
// dst is where the client says it will send from (zero: unknown).
func (s *Server) associate(control net.Conn, dst socksAddr) {
	local, ok1 := control.LocalAddr().(*net.TCPAddr)
	remote, ok2 := control.RemoteAddr().(*net.TCPAddr)
	if !ok1 || !ok2 {
		s.reply(control, socksRepGeneralFailure, nil)
		return
	}
	clientIP := remote.AddrPort().Addr().Unmap()
	if dst.ip.IsValid() && !dst.ip.IsUnspecified() && dst.ip != clientIP {
		s.g.Refuse(proxy.RefusedRequest)
		s.reply(control, socksRepNotAllowed, nil)
		s.logf("socks5: %v: udp associate from %v refused: not the client's address", remote, dst.ip)
		return
	}
	// The relay takes datagrams from the client's IP only, and from the
	// first port one arrives from when the request named none. With
	// authentication on, that would let any process on the client's host
	// (no credentials needed) take the association with the first
	// datagram: the client must name its UDP port.
	if dst.port == 0 && s.authRequired() {
		s.g.Refuse(proxy.RefusedRequest)
		s.reply(control, socksRepNotAllowed, nil)
		s.logf("socks5: %v: udp associate refused: with authentication on, the request must name the client's UDP port", remote)
		return
	}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: local.IP, Zone: local.Zone})
	if err != nil {
		s.reply(control, socksRepGeneralFailure, nil)
		s.logf("socks5: %v: udp associate: %v", remote, err)
		return
	}
	a := &socksAssoc{
		s:         s,
		control:   control,
		pc:        pc,
		clientIP:  clientIP,
		fixedPort: dst.port,
		start:     time.Now(),
		dests:     make(map[string]*socksUDPDest),
	}
	a.ctx, a.cancel = context.WithCancel(s.g.Context())
	defer a.end()
	if err := s.reply(control, socksRepSucceeded, pc.LocalAddr()); err != nil {
		return
	}
	if !s.g.Spawn(a.readClient) || !s.g.Spawn(a.watchIdle) {
		return
	}
	// The control connection carries nothing more; its end (by the
	// client, Close, readClient or watchIdle) ends the association.
	io.Copy(io.Discard, control)
}

// end tears the association down. Its goroutines exit on their own once
// their sockets are closed.
func (a *socksAssoc) end() {
	a.mu.Lock()
	a.ended = true
	var conns []net.Conn
	for _, d := range a.dests {
		if d.conn != nil {
			conns = append(conns, d.conn)
		}
	}
	a.mu.Unlock()
	a.cancel()
	a.pc.Close()
	a.control.Close()
	for _, c := range conns {
		c.Close()
	}
}

func (a *socksAssoc) touch(d *socksUDPDest) {
	now := int64(time.Since(a.start))
	a.lastUsed.Store(now)
	if d != nil {
		d.lastUsed.Store(now)
	}
}

// readClient relays datagrams from the client to their destinations.
func (a *socksAssoc) readClient() {
	buf := make([]byte, socksUDPHeaderMax+socksMaxDatagram)
	for {
		n, src, err := a.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			a.control.Close()
			return
		}
		if a.acceptFrom(src) {
			a.fromClient(buf[:n])
		}
	}
}

// acceptFrom reports whether a datagram from src belongs to the client: its
// IP, the port the request named, and once one datagram has been accepted,
// that datagram's port.
func (a *socksAssoc) acceptFrom(src netip.AddrPort) bool {
	if src.Addr().Unmap() != a.clientIP || (a.fixedPort != 0 && src.Port() != a.fixedPort) {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.client.IsValid() {
		a.client = src
		return true
	}
	return a.client == src
}

// fromClient relays one SOCKS UDP datagram b (header and data).
func (a *socksAssoc) fromClient(b []byte) {
	if len(b) < 4 || b[0] != 0 || b[1] != 0 || b[2] != 0 {
		return // short, or a fragment: fragmentation is not supported
	}
	dst, n, err := parseSOCKSAddr(b[3:])
	if err != nil || dst.port == 0 {
		return
	}
	hdrLen := 3 + n
	payload := b[hdrLen:]
	key := dst.String()

	a.mu.Lock()
	d := a.dests[key]
	if d != nil {
		conn := d.conn
		a.mu.Unlock()
		if conn != nil { // else still dialing: drop
			a.touch(d)
			conn.Write(payload)
		}
		return
	}
	if a.ended || len(a.dests) >= socksMaxUDPDests {
		a.mu.Unlock()
		a.s.logf("socks5: %v: udp: dropped datagram to %v: association full", a.clientIP, dst)
		return
	}
	d = &socksUDPDest{key: key, hdr: append([]byte(nil), b[:hdrLen]...)}
	a.dests[key] = d
	a.mu.Unlock()

	a.touch(d)
	first := append([]byte(nil), payload...)
	if !a.s.g.Spawn(func() { a.runDest(d, dst, first) }) {
		a.removeDest(d)
	}
}

func (a *socksAssoc) removeDest(d *socksUDPDest) {
	a.mu.Lock()
	if a.dests[d.key] == d {
		delete(a.dests, d.key)
	}
	a.mu.Unlock()
}

// runDest dials dst, sends first, and relays replies to the client until
// the destination's conn is closed or fails.
func (a *socksAssoc) runDest(d *socksUDPDest, dst socksAddr, first []byte) {
	defer a.removeDest(d)
	ctx, cancel := context.WithTimeout(a.ctx, a.s.dialTimeout())
	conn, err := a.s.Dial(ctx, "udp", dst.String())
	cancel()
	if err == nil && conn == nil {
		err = errors.New("dial returned no connection")
	}
	if err != nil {
		a.s.logf("socks5: %v: udp dial %v: %v", a.clientIP, dst, err)
		return
	}
	defer conn.Close()
	a.mu.Lock()
	ended := a.ended
	if !ended {
		d.conn = conn
	}
	client := a.client
	a.mu.Unlock()
	if ended {
		return
	}
	a.touch(d)
	conn.Write(first)

	buf := make([]byte, len(d.hdr)+socksMaxDatagram)
	copy(buf, d.hdr)
	for {
		n, err := conn.Read(buf[len(d.hdr):])
		if err != nil {
			return
		}
		a.touch(d)
		a.pc.WriteToUDPAddrPort(buf[:len(d.hdr)+n], client)
	}
}

// watchIdle ends the association after UDPIdleTimeout without traffic and
// drops destinations idle that long.
func (a *socksAssoc) watchIdle() {
	timeout := a.s.udpIdleTimeout()
	tick := time.NewTicker(max(timeout/4, time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-tick.C:
		}
		now := time.Since(a.start)
		if now-time.Duration(a.lastUsed.Load()) >= timeout {
			a.control.Close()
			return
		}
		var idle []net.Conn
		a.mu.Lock()
		for _, d := range a.dests {
			if d.conn != nil && now-time.Duration(d.lastUsed.Load()) >= timeout {
				idle = append(idle, d.conn)
			}
		}
		a.mu.Unlock()
		for _, c := range idle {
			c.Close() // its runDest removes it
		}
	}
}
