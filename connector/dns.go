package connector

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/appconnector/appconnector/connector/apptype"
	"github.com/appconnector/appconnector/connector/logger"
	"github.com/appconnector/appconnector/connector/upstream"
	"github.com/appconnector/appconnector/netstack"
)

// DNS interception: the connector answers DNS on port 53 of each of its
// tunnel addresses, inside the userspace stack. A question for a name of an
// app the asking peer may use is resolved upstream through host sockets;
// the A and AAAA answers on the question's CNAME chain are learned as
// routes before the answer goes back. Other names get REFUSED (or are
// forwarded unlearned, if so configured). miekg/dns is used only in this
// file and learn.go.

const (
	// defaultDNSTimeout bounds the whole upstream resolution of one query.
	defaultDNSTimeout = 5 * time.Second
	// ednsSize is the UDP payload size we advertise and accept (the DNS
	// flag day 2020 value, which avoids fragmentation).
	ednsSize = 1232
	// defaultDNSTCPIdle closes idle DNS-over-TCP connections from peers.
	defaultDNSTCPIdle = 10 * time.Second
)

// Defaults for the DNS-over-TCP connection caps. An idle connection costs
// a goroutine and a userspace TCP endpoint (~20 KiB) until the idle
// timeout closes it.
const (
	DefaultMaxDNSTCPConns        = 4096
	DefaultMaxDNSTCPConnsPerPeer = 1024
)

// A peer's answers may teach the table DefaultLearnRate new addresses a
// second, DefaultLearnBurst at once; an answer that would go beyond is
// SERVFAIL (the client asks again later), so that one peer asking for
// endless names under a wildcard app cannot churn the table at the speed
// of its questions. A page that resolves fifty names of four addresses
// each stays well inside.
const (
	DefaultLearnRate  = 100
	DefaultLearnBurst = 1000
)

// Questions being resolved upstream at once, over all peers and per peer.
// Beyond either, a question is answered SERVFAIL at once: a peer cannot
// pin unbounded goroutines and host sockets with questions.
const (
	maxDNSInFlight        = 512
	maxDNSInFlightPerPeer = 64
)

// dnsStats are the DNS counters.
type dnsStats struct {
	Answered, Refused, ServFail, Forwarded, FormErr, Limited, Stale atomic.Uint64
}

// dnsService serves DNS for one Connector.
type dnsService struct {
	c         *Connector
	upstreams []*upstream.Upstream
	started   time.Time     // health counts from here before any answer
	healthWin time.Duration // Config.DNSHealthWindow
	forward   bool          // forward names of no app instead of refusing them
	timeout   time.Duration
	logf      logger.Logf // rate-limited
	// warnf logs an upstream starting or stopping to fail: once per
	// change, not once per question.
	warnf logger.Logf
	stats dnsStats

	failingMu sync.Mutex
	failing   map[string]bool // upstreams whose last exchange failed

	tcpIdle  time.Duration
	tcpConns connLimit
	// questions are the questions being resolved upstream.
	questions connLimit
	learnRate *netstack.PeerRates // new learned addresses, per peer
	stale     staleCache          // the last answers for app names
	now       func() time.Time
	learnMax  int // its burst

	// udpBusy counts the goroutines answering UDP questions.
	udpBusy connLimit

	closing atomic.Bool // set by close: read errors end serveUDP
	mu      sync.Mutex  // guards the fields after it
	servers []*dns.Server
	pcs     []net.PacketConn
	wg      sync.WaitGroup
}

// start serves on conns and listeners (one of each per tunnel address).
func (d *dnsService) start(pcs []net.PacketConn, lns []net.Listener) {
	d.mu.Lock()
	defer d.mu.Unlock()
	// Each server is running when start returns, so close can always
	// shut it down (Shutdown of a server not yet started does nothing).
	serve := func(srv *dns.Server) {
		d.servers = append(d.servers, srv)
		if err := upstream.StartServer(&d.wg, srv); err != nil {
			d.logf("dns: serve: %v", err)
		}
	}
	for _, pc := range pcs {
		d.pcs = append(d.pcs, pc)
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.serveUDP(pc)
		}()
	}
	for _, ln := range lns {
		serve(&dns.Server{
			Listener: &limitListener{Listener: ln, lim: &d.tcpConns, peerOf: d.c.peerOfAddr, logf: d.logf, what: "DNS-over-TCP"}, Handler: d,
			IdleTimeout:   func() time.Duration { return d.tcpIdle },
			ReadTimeout:   d.tcpIdle,
			WriteTimeout:  d.tcpIdle,
			MaxTCPQueries: 1000,
		})
	}
}

// close stops the servers and waits for them.
func (d *dnsService) close() {
	d.closing.Store(true)
	d.mu.Lock()
	servers, pcs := d.servers, d.pcs
	d.servers, d.pcs = nil, nil
	d.mu.Unlock()
	for _, pc := range pcs {
		pc.Close()
	}
	for _, srv := range servers {
		srv.Shutdown()
	}
	d.wg.Wait()
}

// serveUDP answers the questions that arrive on pc until it is closed,
// each on a goroutine of its own, as many at once as questions may be in
// flight (over all peers and per peer). Beyond that the reading goroutine
// answers SERVFAIL itself, so a peer's flood holds no more goroutines than
// the caps, however fast it comes (a server that starts a goroutine per
// datagram holds as many as the scheduler lets pile up). A datagram that
// is not a DNS message gets no answer.
func (d *dnsService) serveUDP(pc net.PacketConn) {
	buf := make([]byte, dns.MaxMsgSize)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || d.closing.Load() || d.c.ctx.Err() != nil {
				return
			}
			continue
		}
		req := new(dns.Msg)
		if req.Unpack(buf[:n]) != nil {
			continue
		}
		src := addrOf(from)
		p := d.c.peers.lookup(src)
		if !d.udpBusy.take(p.key) {
			d.stats.Limited.Add(1)
			d.send(pc, from, src, d.wire(src, req, withEDE(reply(req, dns.RcodeServerFailure), dns.ExtendedErrorCodeOther, "too many questions in flight"), true))
			continue
		}
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			defer d.udpBusy.give(p.key)
			ctx, cancel := context.WithTimeout(d.c.ctx, d.timeout)
			defer cancel()
			d.send(pc, from, src, d.wire(src, req, d.answer(ctx, p, req), true))
		}()
	}
}

// closeUpstreams closes the upstreams' kept connections, once nothing
// asks them any more.
func (d *dnsService) closeUpstreams() {
	for _, up := range d.upstreams {
		up.Close()
	}
}

// ServeDNS implements dns.Handler, for DNS over TCP.
func (d *dnsService) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	src := addrOf(w.RemoteAddr())
	ctx, cancel := context.WithTimeout(d.c.ctx, d.timeout)
	defer cancel()
	if b := d.wire(src, req, d.answer(ctx, d.c.peers.lookup(src), req), false); b != nil {
		if _, err := w.Write(b); err != nil {
			d.logf("dns: reply to %v: %v", src, err)
		}
	}
}

// send writes b, a reply to src, to addr on pc.
func (d *dnsService) send(pc net.PacketConn, addr net.Addr, src netip.Addr, b []byte) {
	if b == nil {
		return
	}
	if _, err := pc.WriteTo(b, addr); err != nil {
		d.logf("dns: reply to %v: %v", src, err)
	}
}

// wire is resp, the answer to req from src, in wire format (over UDP,
// truncated to the size req accepts); nil if it cannot be written.
func (d *dnsService) wire(src netip.Addr, req, resp *dns.Msg, udp bool) []byte {
	if udp {
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = int(min(max(opt.UDPSize(), dns.MinMsgSize), ednsSize))
		}
		resp.Truncate(size)
	}
	b, err := packChecked(resp)
	if err != nil {
		// An upstream's answer that parsed but does not survive being
		// written out again (miekg/dns writes a record read with empty
		// data as a malformed one): the client would get garbage.
		d.logf("dns: reply to %v cannot be relayed, SERVFAIL instead: %v", src, err)
		if b, err = packChecked(withEDE(reply(req, dns.RcodeServerFailure), dns.ExtendedErrorCodeInvalidData, "the upstream's answer is malformed")); err != nil {
			d.logf("dns: reply to %v: %v", src, err)
			return nil
		}
	}
	return b
}

// packChecked packs m and checks that the result reads back.
func packChecked(m *dns.Msg) ([]byte, error) {
	b, err := m.Pack()
	if err != nil {
		return nil, err
	}
	var back dns.Msg
	if err := back.Unpack(b); err != nil {
		return nil, fmt.Errorf("packed answer does not read back: %w", err)
	}
	return b, nil
}

// answer builds the reply to req from peer p. Routes are learned before it
// returns. What the connector decides itself carries an Extended DNS
// Error (RFC 8914) saying why, for clients that asked with EDNS.
func (d *dnsService) answer(ctx context.Context, p peerID, req *dns.Msg) *dns.Msg {
	if req.Response || req.Opcode != dns.OpcodeQuery || len(req.Question) != 1 {
		d.stats.FormErr.Add(1)
		return reply(req, dns.RcodeFormatError)
	}
	q := req.Question[0]
	if q.Qclass != dns.ClassINET {
		d.stats.Refused.Add(1)
		return withEDE(reply(req, dns.RcodeRefused), dns.ExtendedErrorCodeNotSupported, "only class IN is served")
	}
	known, ok := d.c.table.lookupName(q.Name, p)
	switch {
	case known && !ok:
		// An app's name, but not for this peer.
		d.stats.Refused.Add(1)
		return withEDE(reply(req, dns.RcodeRefused), dns.ExtendedErrorCodeProhibited, "a name of an app this peer may not use")
	case !known && !d.forward:
		d.stats.Refused.Add(1)
		m := withEDE(reply(req, dns.RcodeRefused), dns.ExtendedErrorCodeBlocked, "not a name of any app of this connector")
		if why := d.unhealthy(); why != "" {
			// The project's client probes with such a name: this tells
			// it to ask another connector for app names.
			withEDE(m, dns.ExtendedErrorCodeNotReady, why)
		}
		return m
	case known && d.c.draining.Load():
		// Shutting down: flows to the answer would be refused, so send
		// the client to another connector now.
		d.stats.ServFail.Add(1)
		return withEDE(reply(req, dns.RcodeServerFailure), dns.ExtendedErrorCodeNotReady, "the connector is shutting down")
	}
	if !d.questions.take(p.key) {
		d.stats.Limited.Add(1)
		d.logf("dns: %s: too many questions in flight; SERVFAIL", q.Name)
		return withEDE(reply(req, dns.RcodeServerFailure), dns.ExtendedErrorCodeOther, "too many questions in flight")
	}
	up, err := d.exchange(ctx, q, req)
	d.questions.give(p.key)
	var stale time.Duration // the age of the answer, if served stale
	key := staleKey{name: apptype.CanonicalName(q.Name), qtype: q.Qtype}
	if opt := req.IsEdns0(); opt != nil {
		key.do = opt.Do()
	}
	if err != nil && known {
		if m, age := d.stale.get(key, d.now()); m != nil {
			d.logf("dns: %s: every upstream failed, the answer of %s ago served stale: %v", q.Name, age.Round(time.Second), err)
			up, err, stale = m, nil, max(age, 1)
		}
	}
	if err != nil {
		// Each failing upstream was logged when it started failing.
		d.stats.ServFail.Add(1)
		// The text names no upstream: peers need not learn the
		// connector's resolvers.
		code, text := uint16(dns.ExtendedErrorCodeNetworkError), "no upstream answered"
		if errors.Is(err, errUpstreamRcode) {
			code, text = dns.ExtendedErrorCodeNoReachableAuthority, "the upstreams answered SERVFAIL or REFUSED"
		}
		return withEDE(reply(req, dns.RcodeServerFailure), code, text)
	}
	if !known {
		d.stats.Forwarded.Add(1)
		return relay(req, up)
	}
	if stale == 0 && up.Rcode == dns.RcodeSuccess {
		d.stale.put(key, up, d.now())
	}
	// The names the answer's chain passes through (CNAMEs, and the
	// targets of service bindings) may belong to other apps. One the
	// peer may not use makes the whole answer REFUSED, as the question
	// for that name itself would be: the addresses are that app's, and
	// the answer would tell them. The addresses are learned for the app
	// of the last name on the chain that has one, under that app's rules
	// (its approval, its allowPrivate), not for an open app whose name
	// merely points there; the domain recorded is the question's unless
	// the chain left its apps.
	owner := q.Name
	if up.Rcode == dns.RcodeSuccess {
		for _, n := range chainNames(q.Name, q.Qtype, up.Answer)[1:] {
			switch known, ok := d.c.table.lookupName(n, p); {
			case known && !ok:
				d.c.table.countChainRefused()
				d.stats.Refused.Add(1)
				d.logf("dns: %s: REFUSED: its answer's chain reaches %s, a name of an app this peer may not use", q.Name, n)
				return withEDE(reply(req, dns.RcodeRefused), dns.ExtendedErrorCodeProhibited, "the answer leads to a name of an app this peer may not use")
			case known && !d.c.table.sameApps(n, owner):
				owner = n
			}
		}
	}
	var filtered string // why some addresses of the answer were not learned
	var refused []notLearned
	if up.Rcode == dns.RcodeSuccess && learnsFrom(q.Qtype) {
		addrs, err := chainAddrs(q.Name, q.Qtype, up.Answer)
		if err == nil {
			if n := d.c.table.unlearned(addrs); n > 0 && !d.learnRate.AllowN(p.key, 0, min(n, d.learnMax)) {
				d.stats.Limited.Add(1)
				d.logf("dns: %s: the asking peer is learning new routes too fast; SERVFAIL", q.Name)
				return withEDE(reply(req, dns.RcodeServerFailure), dns.ExtendedErrorCodeOther, "this peer is learning new routes too fast")
			}
		}
		if err != nil {
			d.c.table.countChainRefused()
			d.logf("dns: %s: no routes learned: %v", q.Name, err)
			filtered = "no routes learned: " + err.Error()
		} else if refused = d.c.table.learn(p, owner, addrs); len(refused) > 0 {
			d.logf("dns: %s: not learned: %v", q.Name, refused)
			filtered = fmt.Sprintf("not learned: %v", refused)
		}
	}
	if stale > 0 {
		d.stats.Stale.Add(1)
	} else {
		d.stats.Answered.Add(1)
	}
	m := relay(req, up)
	// A hint is a suggestion: a client told none connects to what the
	// target name resolves to instead. One this peer cannot reach (not
	// learned, or waiting for approval) is not told.
	reachable := func(a netip.Addr) bool { return d.c.table.reachable(p, a) }
	stripHints(m.Answer, reachable)
	stripHints(m.Extra, reachable)
	// No client caches the answer past the longest life of its routes.
	capTTLs(m, d.c.table.cfg.ttl)
	if stale > 0 {
		withEDE(m, dns.ExtendedErrorCodeStaleAnswer, fmt.Sprintf("every upstream failed; the answer of %s ago", stale.Round(time.Second)))
	}
	if filtered != "" {
		withEDE(m, dns.ExtendedErrorCodeFiltered, filtered)
	}
	return m
}

// capTTLs lowers the TTLs of m's records to at most maxTTL.
func capTTLs(m *dns.Msg, maxTTL time.Duration) {
	limit := uint32(min(maxTTL/time.Second, 1<<31-1))
	for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			if h := rr.Header(); h.Rrtype != dns.TypeOPT && h.Ttl > limit {
				h.Ttl = limit
			}
		}
	}
}

// maxEDEText bounds an Extended DNS Error's text, so that it never
// pushes an answer over the size a client accepts on its own.
const maxEDEText = 200

// withEDE adds an Extended DNS Error (RFC 8914) with code and text to m,
// if m has an EDNS record (the question had one), and returns m.
func withEDE(m *dns.Msg, code uint16, text string) *dns.Msg {
	opt := m.IsEdns0()
	if opt == nil {
		return m
	}
	if len(text) > maxEDEText {
		text = text[:maxEDEText-3] + "..."
	}
	opt.Option = append(opt.Option, &dns.EDNS0_EDE{InfoCode: code, ExtraText: text})
	return m
}

// errUpstreamRcode is an upstream's answer of SERVFAIL or REFUSED.
var errUpstreamRcode = errors.New("answered")

// exchange asks the upstreams, in order, for q. A truncated UDP answer is
// asked again over TCP.
func (d *dnsService) exchange(ctx context.Context, q dns.Question, req *dns.Msg) (*dns.Msg, error) {
	if len(d.upstreams) == 0 {
		return nil, errors.New("no upstream DNS servers")
	}
	m := new(dns.Msg)
	m.SetQuestion(q.Name, q.Qtype)
	m.Question[0].Qclass = q.Qclass
	m.RecursionDesired = true
	m.CheckingDisabled = req.CheckingDisabled
	do := false
	if opt := req.IsEdns0(); opt != nil {
		do = opt.Do()
	}
	m.SetEdns0(ednsSize, do)
	var errs []error
	for _, up := range d.upstreams {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		tctx, cancel := context.WithTimeout(ctx, upstream.TryTimeout)
		r, err := up.Exchange(tctx, m)
		cancel()
		if err == nil && r.Rcode != dns.RcodeServerFailure && r.Rcode != dns.RcodeRefused {
			d.upstreamOK(up.Name)
			return r, nil
		}
		if err == nil {
			// The upstream answered: it is up, even if this name fails.
			d.upstreamOK(up.Name)
			err = fmt.Errorf("%w %s", errUpstreamRcode, dns.RcodeToString[r.Rcode])
		} else if ctx.Err() == nil {
			// Failed on its own, not because the question ran out of time.
			d.upstreamFailed(up.Name, q, err)
		}
		errs = append(errs, fmt.Errorf("upstream %s: %w", up.Name, err))
	}
	return nil, errors.Join(errs...)
}

// lastAnswer is when an upstream last answered (not SERVFAIL): the start
// of service if none has yet.
func (d *dnsService) lastAnswer() time.Time {
	last := d.started
	for _, up := range d.upstreams {
		if t := up.LastAnswer(); t.After(last) {
			last = t
		}
	}
	return last
}

// unhealthy says why DNS is failing, or "" if it is not: no upstream
// answered within the health window.
func (d *dnsService) unhealthy() string {
	if len(d.upstreams) == 0 {
		return ""
	}
	if since := time.Since(d.lastAnswer()); since > d.healthWin {
		return fmt.Sprintf("no DNS upstream has answered for %s", since.Round(time.Second))
	}
	return ""
}

// probe asks every upstream the probe question when none answered in the
// last third of the health window, until ctx ends, so that an idle
// connector knows whether its upstreams are up.
func (d *dnsService) probe(ctx context.Context) {
	every := d.healthWin / 3
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if time.Since(d.lastAnswer()) < every {
			continue
		}
		for _, up := range d.upstreams {
			pctx, cancel := context.WithTimeout(ctx, upstream.TryTimeout)
			_, err := up.Exchange(pctx, probeQuestion())
			cancel()
			if err != nil && ctx.Err() == nil {
				d.upstreamFailed(up.Name, dns.Question{Name: ".", Qtype: dns.TypeNS}, err)
			} else if err == nil {
				d.upstreamOK(up.Name)
			}
		}
	}
}

// upstreamFailed records that up failed to answer q, logging only the
// first failure of a run.
func (d *dnsService) upstreamFailed(up string, q dns.Question, err error) {
	d.failingMu.Lock()
	first := !d.failing[up]
	if first {
		if d.failing == nil {
			d.failing = make(map[string]bool)
		}
		d.failing[up] = true
	}
	d.failingMu.Unlock()
	if first {
		d.warnf("dns: upstream %s failing (questions get SERVFAIL; logged again when it answers): %s %s: %v",
			up, q.Name, dns.TypeToString[q.Qtype], err)
	}
}

// upstreamOK records that up answered, logging the end of a failure run.
func (d *dnsService) upstreamOK(up string) {
	d.failingMu.Lock()
	was := d.failing[up]
	delete(d.failing, up)
	d.failingMu.Unlock()
	if was {
		d.warnf("dns: upstream %s answering again", up)
	}
}

// reply is an empty answer to req with rcode.
func reply(req *dns.Msg, rcode int) *dns.Msg {
	m := new(dns.Msg)
	m.SetRcode(req, rcode)
	m.RecursionAvailable = true
	if len(req.Question) > 1 {
		m.Question = m.Question[:1]
	}
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(ednsSize, opt.Do())
	}
	return m
}

// relay turns an upstream answer into the answer to req: req's ID and
// question (with its letter case), the upstream's sections without its
// EDNS record, and our own EDNS record if req had one.
func relay(req, up *dns.Msg) *dns.Msg {
	m := up.Copy()
	m.Id = req.Id
	m.Response = true
	m.Opcode = req.Opcode
	m.RecursionDesired = req.RecursionDesired
	m.RecursionAvailable = true
	m.Question = req.Question
	m.Compress = true
	extra := m.Extra[:0]
	for _, rr := range m.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			extra = append(extra, rr)
		}
	}
	m.Extra = extra
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(ednsSize, opt.Do())
	}
	return m
}

// peerOfAddr is the key of the peer a connection's remote address belongs
// to.
func (c *Connector) peerOfAddr(a net.Addr) string { return c.peers.lookup(addrOf(a)).key }

func addrOf(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}

// connLimit counts what is open (connections, questions in flight), over
// all peers and per peer, against a cap for each.
type connLimit struct {
	max, perPeer int

	mu      sync.Mutex
	open    int
	byPeer  map[string]int
	refused atomic.Uint64
}

func (l *connLimit) take(peer string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open >= l.max || l.byPeer[peer] >= l.perPeer {
		return false
	}
	if l.byPeer == nil {
		l.byPeer = make(map[string]int)
	}
	l.open++
	l.byPeer[peer]++
	return true
}

func (l *connLimit) openNow() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return uint64(l.open)
}

func (l *connLimit) give(peer string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if l.byPeer[peer]--; l.byPeer[peer] == 0 {
		delete(l.byPeer, peer)
	}
}

// limitListener closes connections beyond a connLimit's caps as soon as
// they are accepted, so a peer holding many idle ones cannot starve the
// others (and the server never sees them).
type limitListener struct {
	net.Listener
	lim    *connLimit
	peerOf func(net.Addr) string
	logf   logger.Logf
	what   string // for the log: "DNS-over-TCP", "route API"
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		peer := l.peerOf(c.RemoteAddr())
		if l.lim.take(peer) {
			return &limitConn{Conn: c, release: func() { l.lim.give(peer) }}, nil
		}
		l.lim.refused.Add(1)
		l.logf("%v: too many %s connections; closed", c.RemoteAddr(), l.what)
		c.Close()
	}
}

// limitConn gives its slot back once, on the first Close.
type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// DefaultDNSHealthWindow is how long the connector counts as healthy
// after an upstream last answered; beyond it, /healthz says 503 so that
// clients and load balancers move to another connector. An idle
// connector asks its upstreams a question of its own (the root's NS)
// every third of it, so that its health does not depend on peers asking.
const DefaultDNSHealthWindow = 30 * time.Second

// probeQuestion is the question the health probe asks: the root's NS,
// which every recursive resolver answers from its cache.
func probeQuestion() *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(".", dns.TypeNS)
	m.RecursionDesired = true
	m.SetEdns0(ednsSize, false)
	return m
}
