package client

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/appconnector/appconnector/connector/upstream"
	"github.com/miekg/dns"
)

// Split DNS: a name under the domains of the apps a connector serves is
// asked of that connector through the tunnel (so the connector learns the
// route before it answers); any other name is asked of the host's DNS
// servers. Answers pass through unchanged, NXDOMAIN and SERVFAIL
// included.

const (
	// pinMin and pinMax bound how long an address a connector answered
	// for an app name is routed to it before the route API takes over.
	pinMin = 30 * time.Second
	pinMax = 10 * time.Minute
	// dnsTimeout bounds one question, whichever way it goes.
	dnsTimeout = 5 * time.Second
)

// exchange answers one DNS message.
func (c *Client) exchange(ctx context.Context, req *dns.Msg) *dns.Msg {
	r, _ := c.resolve(ctx, req)
	return r
}

// maxDNSInFlight bounds the questions the client answers at once; beyond
// it a question gets SERVFAIL at once, so a program cannot exhaust the
// client's sockets with questions.
const maxDNSInFlight = 256

// connectorTry bounds one question to one connector, so a dead one
// leaves time to ask the next.
const connectorTry = 1500 * time.Millisecond

// resolve answers one DNS message and says which connector answered it
// (nil: the host's resolvers, or a local failure), and counts the answer.
func (c *Client) resolve(ctx context.Context, req *dns.Msg) (*dns.Msg, *link) {
	r, l, route := c.resolveRoute(ctx, req)
	c.dnsCounts.add(route, r.Rcode)
	return r, l
}

// resolveRoute is resolve, also saying which way the answer came:
// routeTunnel, routeHost or routeLocal.
func (c *Client) resolveRoute(ctx context.Context, req *dns.Msg) (*dns.Msg, *link, int) {
	if len(req.Question) != 1 || req.Opcode != dns.OpcodeQuery || req.Response {
		return failure(req, dns.RcodeFormatError), nil, routeLocal
	}
	select {
	case c.dnsSlots <- struct{}{}:
		defer func() { <-c.dnsSlots }()
	default:
		return failure(req, dns.RcodeServerFailure), nil, routeLocal
	}
	ctx, cancel := context.WithTimeout(ctx, dnsTimeout)
	defer cancel()
	q := req.Question[0]
	if !c.cfg.IgnoreRoutes {
		var last *dns.Msg
		var lastLink *link
		owned := false
		for _, l := range c.namesFor(q.Name) {
			owned = true
			m := req.Copy()
			m.Id = dns.Id()
			tctx, tcancel := context.WithTimeout(ctx, connectorTry)
			r, err := l.exchange(tctx, m)
			tcancel()
			if err != nil {
				c.log.Debug("dns through connector failed", "name", q.Name, "peer", l.name, "err", err)
				continue
			}
			r.Id = req.Id
			last, lastLink = r, l
			if r.Rcode == dns.RcodeServerFailure || r.Rcode == dns.RcodeRefused {
				continue // this connector cannot answer; another may
			}
			addrs := answerAddrs(r)
			l.pin(addrs, answerTTL(r))
			c.remember(q.Name, addrs)
			return r, l, routeTunnel
		}
		if last != nil {
			return last, lastLink, routeTunnel
		}
		if owned {
			return failure(req, dns.RcodeServerFailure), nil, routeLocal
		}
	}
	r, err := c.hostExchange(ctx, req)
	if err != nil {
		c.log.Debug("dns through the host failed", "name", q.Name, "err", err)
		return failure(req, dns.RcodeServerFailure), nil, routeLocal
	}
	return r, nil, routeHost
}

// namesFor returns the healthy connectors serving an app that name
// belongs to, lowest round trip first, those whose DNS upstreams fail
// after the others; if some serve it but none is healthy, the unhealthy
// ones (a probe can be wrong; the question may still get through).
func (c *Client) namesFor(name string) []*link {
	var healthy, noDNS, down []*link
	for _, l := range c.links {
		if !l.dnsAddr.IsValid() || !l.ownsName(name) {
			continue
		}
		switch ok, _ := l.state(); {
		case !ok:
			down = append(down, l)
		case !l.dnsHealthy():
			noDNS = append(noDNS, l)
		default:
			healthy = append(healthy, l)
		}
	}
	sortByRTT(healthy)
	sortByRTT(noDNS)
	return slices.Concat(healthy, noDNS, down)
}

func sortByRTT(ls []*link) {
	for i := 1; i < len(ls); i++ {
		for j := i; j > 0; j-- {
			_, a := ls[j-1].state()
			_, b := ls[j].state()
			if a <= b {
				break
			}
			ls[j-1], ls[j] = ls[j], ls[j-1]
		}
	}
}

// hostExchange asks the host's DNS servers, in order: through an exit
// peer if one carries the server's address (so names of no app do not
// leak around it), else through host sockets. A truncated UDP answer is
// asked again over TCP.
func (c *Client) hostExchange(ctx context.Context, req *dns.Msg) (*dns.Msg, error) {
	if len(c.hostDNS) == 0 {
		return nil, errors.New("no host DNS servers")
	}
	m := req.Copy()
	m.Id = dns.Id()
	var errs []error
	for _, s := range c.hostDNS {
		r, err := c.ask(ctx, s, m)
		if err == nil {
			r.Id = req.Id
			return r, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", s, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

// ask sends m to server ("ip:port") the way a flow to it would go.
func (c *Client) ask(ctx context.Context, server string, m *dns.Msg) (*dns.Msg, error) {
	ap, err := netip.ParseAddrPort(server)
	if err != nil {
		return nil, err
	}
	dial := c.direct
	if l, _ := c.pick(ap.Addr().Unmap()); l != nil {
		dial = l.dev.Stack.DialContext
	}
	ctx, cancel := context.WithTimeout(ctx, upstream.TryTimeout)
	defer cancel()
	return upstream.ExchangeOver(ctx, dial, server, m)
}

func failure(req *dns.Msg, rcode int) *dns.Msg {
	m := new(dns.Msg)
	m.SetRcode(req, rcode)
	m.RecursionAvailable = true
	return m
}

func answerAddrs(m *dns.Msg) []netip.Addr {
	var out []netip.Addr
	for _, rr := range m.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			if a, ok := netip.AddrFromSlice(rr.A.To4()); ok {
				out = append(out, a)
			}
		case *dns.AAAA:
			if a, ok := netip.AddrFromSlice(rr.AAAA); ok {
				out = append(out, a.Unmap())
			}
		}
	}
	return out
}

func answerTTL(m *dns.Msg) time.Duration {
	ttl := pinMax
	for _, rr := range m.Answer {
		ttl = min(ttl, time.Duration(rr.Header().Ttl)*time.Second)
	}
	return max(ttl, pinMin)
}

// lookup resolves host to addresses for network (A for "tcp4"/"udp4",
// AAAA for "...6", both otherwise, IPv4 first). Answers are cached for
// their TTL (at most cacheMax), as long as the connector that gave them
// stays up: after a failover the name is asked again, of a connector
// that will route it.
func (c *Client) lookup(ctx context.Context, host, network string) ([]netip.Addr, error) {
	var types []uint16
	switch network[len(network)-1:] {
	case "4":
		types = []uint16{dns.TypeA}
	case "6":
		types = []uint16{dns.TypeAAAA}
	default:
		types = []uint16{dns.TypeA, dns.TypeAAAA}
	}
	name := dns.Fqdn(host)
	var out []netip.Addr
	rcode := dns.RcodeSuccess
	for _, t := range types {
		if e, ok := c.cache.get(name, t); ok {
			out, rcode = append(out, e.addrs...), e.rcode
			continue
		}
		m := new(dns.Msg)
		m.SetQuestion(name, t)
		r, via := c.resolve(ctx, m)
		addrs := answerAddrs(r)
		if r.Rcode == dns.RcodeSuccess || r.Rcode == dns.RcodeNameError {
			c.cache.put(name, t, cacheEntry{addrs: addrs, rcode: r.Rcode, via: via}, answerTTLFor(r))
		}
		out, rcode = append(out, addrs...), r.Rcode
	}
	if len(out) == 0 {
		if rcode == dns.RcodeNameError {
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		return nil, &net.DNSError{Err: "no addresses (" + dns.RcodeToString[rcode] + ")", Name: host}
	}
	return out, nil
}

// cacheMax bounds how long lookup keeps an answer; negative answers are
// kept cacheNegative.
const (
	cacheMax      = 5 * time.Minute
	cacheNegative = 5 * time.Second
	cacheEntries  = 4096
)

type cacheEntry struct {
	addrs   []netip.Addr
	rcode   int
	via     *link // the connector that answered, or nil
	expires time.Time
}

type cacheKey struct {
	name  string
	qtype uint16
}

// dnsCache holds lookup's answers.
type dnsCache struct {
	mu sync.Mutex // guards the fields after it
	m  map[cacheKey]cacheEntry
}

func (dc *dnsCache) get(name string, qtype uint16) (cacheEntry, bool) {
	dc.mu.Lock()
	e, ok := dc.m[cacheKey{dns.CanonicalName(name), qtype}]
	dc.mu.Unlock()
	if !ok || time.Now().After(e.expires) {
		return cacheEntry{}, false
	}
	if e.via != nil {
		if healthy, _ := e.via.state(); !healthy {
			return cacheEntry{}, false
		}
	}
	return e, true
}

func (dc *dnsCache) clear() {
	dc.mu.Lock()
	dc.m = nil
	dc.mu.Unlock()
}

func (dc *dnsCache) put(name string, qtype uint16, e cacheEntry, ttl time.Duration) {
	if ttl <= 0 {
		return
	}
	e.expires = time.Now().Add(ttl)
	dc.mu.Lock()
	defer dc.mu.Unlock()
	if dc.m == nil || len(dc.m) >= cacheEntries {
		dc.m = make(map[cacheKey]cacheEntry) // crude but bounded
	}
	dc.m[cacheKey{dns.CanonicalName(name), qtype}] = e
}

// answerTTLFor is how long lookup may cache r.
func answerTTLFor(r *dns.Msg) time.Duration {
	if r.Rcode == dns.RcodeNameError || len(r.Answer) == 0 {
		return cacheNegative
	}
	ttl := cacheMax
	for _, rr := range r.Answer {
		ttl = min(ttl, time.Duration(rr.Header().Ttl)*time.Second)
	}
	return ttl
}

// Resolver returns a *net.Resolver that resolves through the client's
// split DNS: app names by the connectors, other names by the host's DNS
// servers.
func (c *Client) Resolver() *net.Resolver {
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			a, b := net.Pipe()
			if err := c.goIfOpen(func() { c.serveStream(b) }); err != nil {
				a.Close()
				b.Close()
				return nil, err
			}
			return a, nil
		},
	}
}

// goIfOpen starts fn on the client's WaitGroup unless the client is
// closed.
func (c *Client) goIfOpen(fn func()) error {
	c.bgMu.Lock()
	defer c.bgMu.Unlock()
	if c.ctx.Err() != nil {
		return net.ErrClosed
	}
	c.goBG(fn)
	return nil
}

// serveStream answers DNS messages framed as over TCP (a two-byte length
// before each) on conn until it is closed.
func (c *Client) serveStream(conn net.Conn) {
	defer conn.Close()
	stop := context.AfterFunc(c.ctx, func() { conn.Close() })
	defer stop()
	for {
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		var n [2]byte
		if _, err := io.ReadFull(conn, n[:]); err != nil {
			return
		}
		buf := make([]byte, binary.BigEndian.Uint16(n[:]))
		if _, err := io.ReadFull(conn, buf); err != nil {
			return
		}
		var req dns.Msg
		if err := req.Unpack(buf); err != nil {
			return
		}
		out, err := c.exchange(c.ctx, &req).Pack()
		if err != nil {
			return
		}
		if _, err := conn.Write(binary.BigEndian.AppendUint16(nil, uint16(len(out)))); err != nil {
			return
		}
		if _, err := conn.Write(out); err != nil {
			return
		}
	}
}

// DNSServer serves the client's split DNS on host sockets (for programs
// that use a DNS server address rather than the Go library).
type DNSServer struct {
	servers []*dns.Server
	pcs     []net.PacketConn
	cancel  context.CancelFunc // ends the questions being answered
	wg      sync.WaitGroup
}

// ServeDNS serves DNS on pc (UDP) and ln (TCP); either may be nil. The
// returned server is running; Close stops it.
func (c *Client) ServeDNS(pc net.PacketConn, ln net.Listener) (*DNSServer, error) {
	ctx, cancel := context.WithCancel(c.ctx)
	s := &DNSServer{cancel: cancel}
	if pc != nil {
		s.pcs = append(s.pcs, pc)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			c.serveUDP(ctx, pc, &s.wg)
		}()
	}
	if ln == nil {
		return s, nil
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) { w.WriteMsg(c.exchange(ctx, req)) })
	srv := &dns.Server{Listener: ln, Handler: h, IdleTimeout: func() time.Duration { return 10 * time.Second }}
	if err := upstream.StartServer(&s.wg, srv); err != nil {
		s.Close()
		return nil, fmt.Errorf("client: serve dns: %w", err)
	}
	s.servers = append(s.servers, srv)
	return s, nil
}

// serveUDP answers the questions that arrive on pc until it is closed,
// each on a goroutine of its own (added to wg), at most maxDNSInFlight at
// once. Beyond that the reading goroutine answers SERVFAIL itself: a
// flood holds no more goroutines than the cap, however fast it comes. A
// datagram that is not a DNS message gets no answer.
func (c *Client) serveUDP(ctx context.Context, pc net.PacketConn, wg *sync.WaitGroup) {
	busy := make(chan struct{}, maxDNSInFlight)
	buf := make([]byte, dns.MaxMsgSize)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			continue // an ICMP error from an earlier reply, and the like
		}
		req := new(dns.Msg)
		if req.Unpack(buf[:n]) != nil {
			continue
		}
		select {
		case busy <- struct{}{}:
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-busy }()
				replyUDP(pc, from, req, c.exchange(ctx, req))
			}()
		default:
			replyUDP(pc, from, req, failure(req, dns.RcodeServerFailure))
		}
	}
}

// replyUDP sends resp, the answer to req, to from, truncated to the size
// req accepts.
func replyUDP(pc net.PacketConn, from net.Addr, req, resp *dns.Msg) {
	size := dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil {
		size = int(max(opt.UDPSize(), dns.MinMsgSize))
	}
	resp.Truncate(size)
	if b, err := resp.Pack(); err == nil {
		pc.WriteTo(b, from)
	}
}

// Close stops the DNS server and waits for it.
func (s *DNSServer) Close() error {
	s.cancel()
	for _, pc := range s.pcs {
		pc.Close()
	}
	for _, srv := range s.servers {
		srv.Shutdown()
	}
	s.wg.Wait()
	return nil
}
