// Package client is appconnector's client side, for programs that cannot
// create a TUN device or change routes: an unprivileged sidecar (the
// `appconnector client` command serves DNS, and SOCKS5 and an HTTP proxy
// from packages proxy/socks5 and proxy/httpproxy dialing through
// Client.DialContext, on host loopback) or a Go program embedding it
// (serverless runtimes, tests).
//
// A Client holds one userspace WireGuard tunnel per connector peer of its
// configuration. It follows each connector's route API, so a flow to an
// address inside a connector's routes goes through that connector and
// anything else goes out directly through host sockets (or through an
// exit peer, if one is configured). Names under the apps' domains are
// resolved by a connector through the tunnel, so the connector has
// learned the route before the client dials; other names go to the
// host's resolvers. When a connector stops answering, new flows and
// questions move to another one serving the same app within a few
// seconds, and flows on the dead one are closed at once.
package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/appconnector/appconnector/connector/flowlog"
	"github.com/appconnector/appconnector/connector/netx"
	"github.com/appconnector/appconnector/connector/upstream"
	"github.com/appconnector/appconnector/connector/wireguard"
)

// Config configures a Client.
type Config struct {
	// WireGuard is the client's interface and its peers, as read from a
	// wg-quick file. Required. [Interface] DNS lists the connectors'
	// tunnel addresses: a [Peer] whose AllowedIPs hold one of them is a
	// connector (its routes and DNS are used). A [Peer] whose AllowedIPs
	// hold 0.0.0.0/0 or ::/0 is an exit peer: destinations of no app go
	// through it instead of directly.
	WireGuard *wireguard.Config

	// ListenAddr is the host address of the WireGuard sockets (one per
	// peer, on a port the system picks). The zero Addr means all
	// addresses.
	ListenAddr netip.Addr

	// IgnoreRoutes is the sidecar's --accept-routes=false: app routing
	// off (the opt-out), every flow and every name going the way it would
	// without the connectors (directly, or through an exit peer). It is
	// the flag's negation so that the zero Config routes.
	IgnoreRoutes bool

	// HostDNS are the "ip:port" DNS servers for names of no app. Nil
	// means the name servers of /etc/resolv.conf.
	HostDNS []string

	// Direct opens the host sockets of flows that do not use a tunnel.
	// Nil means a net.Dialer.
	Direct netx.DialFunc

	// ProbeInterval is how often each connector is asked a question to
	// measure it; two unanswered in a row mark it down. ProbeTimeout
	// bounds one. Zero means 1 s each, so a dead connector is left within
	// about 3 s.
	ProbeInterval, ProbeTimeout time.Duration

	// FlowLog, if set, receives a line for each flow DialContext opened
	// when it is closed, every FlowRecordInterval while it is open (zero:
	// 5 minutes), and for dials that failed, aggregated. The caller opens
	// and closes it (after the Client's Close).
	FlowLog            *flowlog.Writer
	FlowRecordInterval time.Duration

	// Logger receives the client's logs. Nil discards them.
	Logger *slog.Logger
}

// Client is a running client. Its methods are safe for concurrent use.
type Client struct {
	cfg     Config
	log     *slog.Logger
	direct  netx.DialFunc
	hostDNS []string
	links   []*link // connectors and exit peers, in config order
	cache   dnsCache
	// dnsSlots bounds the questions being answered at once.
	dnsSlots chan struct{}
	// names maps addresses connectors answered for app names back to a
	// name, so a flow to such an address can be re-resolved through a
	// healthy connector when the one that answered is down.
	namesMu sync.Mutex
	names   map[netip.Addr]string

	// routesVersion grows whenever a connector's routes or domains
	// change; dnsCounts counts answered questions.
	routesVersion atomic.Uint64
	dnsCounts     dnsCounts
	flows         flows

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	bgMu   sync.Mutex // orders starting goroutines against Close
	wg     sync.WaitGroup
	closed sync.Once
}

// New starts a client: its tunnels are up when it returns (WireGuard
// handshakes happen with the first packet).
func New(cfg Config) (*Client, error) {
	if cfg.WireGuard == nil {
		return nil, errors.New("client: no wireguard config")
	}
	if len(cfg.WireGuard.Interface.Addresses) == 0 {
		return nil, errors.New("client: the interface has no Address")
	}
	if len(cfg.WireGuard.Peers) == 0 {
		return nil, errors.New("client: no [Peer]: name at least one connector")
	}
	c := &Client{cfg: cfg, log: cfg.Logger, direct: cfg.Direct, hostDNS: cfg.HostDNS}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.direct == nil {
		c.direct = (&net.Dialer{}).DialContext
	}
	if c.cfg.ProbeInterval <= 0 {
		c.cfg.ProbeInterval = time.Second
	}
	if c.cfg.ProbeTimeout <= 0 {
		c.cfg.ProbeTimeout = time.Second
	}
	if c.hostDNS == nil {
		hs, err := upstream.SystemResolvers("/etc/resolv.conf")
		if err != nil {
			c.log.Warn("no host DNS servers: names of no app will fail", "err", err)
		}
		c.hostDNS = hs
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.dnsSlots = make(chan struct{}, maxDNSInFlight)
	c.flows.open = map[*loggedConn]struct{}{}
	// Each DNS address belongs to the peer with the most specific
	// AllowedIPs holding it (default routes do not count): that peer is
	// the connector answering there.
	dnsOf := make([]netip.Addr, len(cfg.WireGuard.Peers))
	for _, d := range cfg.WireGuard.Interface.DNS {
		best, bestBits := -1, 0
		for i, p := range cfg.WireGuard.Peers {
			for _, a := range p.AllowedIPs {
				if a.Bits() > bestBits && a.Contains(d) {
					best, bestBits = i, a.Bits()
				}
			}
		}
		if best >= 0 && !dnsOf[best].IsValid() {
			dnsOf[best] = d
		}
	}
	for i, p := range cfg.WireGuard.Peers {
		dnsAddr := dnsOf[i]
		l, err := newLink(c, p, dnsAddr)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("client: peer %d: %w", i+1, err)
		}
		c.links = append(c.links, l)
		if !dnsAddr.IsValid() && !l.exit4 && !l.exit6 {
			c.log.Warn("peer is neither a connector (no DNS address in its AllowedIPs) nor an exit peer; only its AllowedIPs are routed to it", "peer", l.name)
		}
	}
	for _, l := range c.links {
		c.goBG(l.run)
	}
	if cfg.FlowLog != nil {
		interval := cfg.FlowRecordInterval
		if interval <= 0 {
			interval = defaultFlowRecordInterval
		}
		c.goBG(func() { c.recordOpenFlows(interval) })
	}
	// Wait (a little) for each connector's first route set, so the
	// client knows the apps' names and routes before the first dial.
	deadline := time.After(5 * time.Second)
	for _, l := range c.links {
		if !l.dnsAddr.IsValid() || cfg.IgnoreRoutes {
			continue
		}
		select {
		case <-l.ready:
		case <-deadline:
			c.log.Warn("connector has not sent its routes yet; starting without them", "peer", l.name)
		}
	}
	return c, nil
}

func (c *Client) goBG(fn func()) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		fn()
	}()
}

// Close stops every tunnel and closes every flow through them. It is
// idempotent.
func (c *Client) Close() error {
	c.closed.Do(func() {
		c.bgMu.Lock()
		c.cancel()
		c.bgMu.Unlock()
		c.wg.Wait()
		for _, l := range c.links {
			l.close()
		}
	})
	return nil
}

// Routes returns the prefixes the client sends through the tunnels now
// (none if IgnoreRoutes is set), sorted.
func (c *Client) Routes() []netip.Prefix {
	if c.cfg.IgnoreRoutes {
		return nil
	}
	var out []netip.Prefix
	for _, l := range c.links {
		if l.dnsAddr.IsValid() || (!l.exit4 && !l.exit6) {
			out = append(out, l.routes()...)
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if d := a.Addr().Compare(b.Addr()); d != 0 {
			return d
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(out)
}

// pick returns the link a flow to dst takes: the healthy connector with
// the most specific route to it (the lowest round trip among equals),
// else an exit peer for dst's family, else nil for a direct flow. A
// destination only connectors that are down route fails rather than
// leaving directly.
func (c *Client) pick(dst netip.Addr) (*link, error) {
	if !c.cfg.IgnoreRoutes {
		now := time.Now()
		var best *link
		bestBits, bestRTT, unhealthy := -1, time.Duration(0), false
		for _, l := range c.links {
			if !l.dnsAddr.IsValid() && (l.exit4 || l.exit6) {
				continue // a pure exit peer: below
			}
			bits := l.match(dst, now)
			if bits <= 0 {
				continue // no route, or only its default route
			}
			healthy, rtt := l.state()
			if !healthy {
				unhealthy = true
				continue
			}
			if bits > bestBits || bits == bestBits && rtt < bestRTT {
				best, bestBits, bestRTT = l, bits, rtt
			}
		}
		if best != nil {
			return best, nil
		}
		if unhealthy {
			return nil, errAllDown
		}
	}
	for _, l := range c.links {
		if dst.Is4() && l.exit4 || dst.Is6() && l.exit6 {
			return l, nil
		}
	}
	return nil, nil
}

var errAllDown = errors.New("every connector routing it is down")

// DialContext connects to address ("host:port"; host may be a name,
// resolved by the client's split DNS) over network ("tcp", "tcp4",
// "tcp6", "udp", "udp4", "udp6"), through the connector that routes the
// destination, or directly. TCP connections support CloseWrite. After
// Close it returns net.ErrClosed.
func (c *Client) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6":
	default:
		return nil, fmt.Errorf("client: dial: unsupported network %q", network)
	}
	if c.ctx.Err() != nil {
		return nil, fmt.Errorf("client: dial %s %s: %w", network, address, net.ErrClosed)
	}
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("client: dial %s %q: %w", network, address, err)
	}
	var addrs []netip.Addr
	name := "" // the host name dialed, for the flow log
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			return nil, fmt.Errorf("client: dial %s %s: addresses with a zone are not routed", network, address)
		}
		addrs = []netip.Addr{a.Unmap()}
	} else {
		name = host
		if addrs, err = c.lookup(ctx, host, network); err != nil {
			return nil, fmt.Errorf("client: dial %s %s: %w", network, address, err)
		}
	}
	portNum, _ := strconv.ParseUint(port, 10, 16)
	var errs []error
	for _, a := range addrs {
		dst := net.JoinHostPort(a.String(), port)
		dstAP := netip.AddrPortFrom(a, uint16(portNum))
		l, err := c.pick(a)
		if errors.Is(err, errAllDown) && c.reresolve(ctx, a) {
			l, err = c.pick(a)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%v: %w", a, err))
			c.dialFailed(network, name, dstAP, "", "connector", err)
			continue
		}
		var conn net.Conn
		peer, via := "", "direct"
		if l == nil {
			conn, err = c.direct(ctx, network, dst)
		} else {
			conn, err = l.dial(ctx, network, dst)
			peer, via = l.peer.PublicKey.String(), "connector"
			if !l.dnsAddr.IsValid() {
				via = "exit"
			}
		}
		if err == nil {
			return c.logged(conn, network, name, peer, via), nil
		}
		c.dialFailed(network, name, dstAP, peer, via, err)
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("client: dial %s %s: %w", network, address, errors.Join(errs...))
}

// remember notes that addrs are answers for name.
func (c *Client) remember(name string, addrs []netip.Addr) {
	c.namesMu.Lock()
	defer c.namesMu.Unlock()
	if c.names == nil || len(c.names)+len(addrs) > maxPins {
		c.names = make(map[netip.Addr]string)
	}
	for _, a := range addrs {
		c.names[a] = name
	}
}

// reresolve asks a healthy connector again for the name a was an answer
// for (if known), so that connector learns the route and a flow to a can
// move to it. It reports whether a healthy connector now routes a.
func (c *Client) reresolve(ctx context.Context, a netip.Addr) bool {
	c.namesMu.Lock()
	name, ok := c.names[a]
	c.namesMu.Unlock()
	if !ok {
		return false
	}
	for _, t := range []uint16{dns.TypeA, dns.TypeAAAA} {
		m := new(dns.Msg)
		m.SetQuestion(name, t)
		c.resolve(ctx, m)
	}
	l, err := c.pick(a)
	return err == nil && l != nil
}

// ConnectorHealth is what the client knows of one connector.
type ConnectorHealth struct {
	PublicKey string        // base64
	Address   netip.Addr    // its tunnel address (DNS)
	Healthy   bool          // answering probes
	DNSDown   bool          // its DNS upstreams fail: names are asked elsewhere first
	RTT       time.Duration // smoothed probe round trip
	Routes    int           // prefixes it routes for this client
}

// Health reports on each connector, in config order (exit-only peers are
// left out).
func (c *Client) Health() []ConnectorHealth {
	var out []ConnectorHealth
	for _, l := range c.links {
		if !l.dnsAddr.IsValid() {
			continue
		}
		healthy, rtt := l.state()
		out = append(out, ConnectorHealth{
			PublicKey: l.peer.PublicKey.String(), Address: l.dnsAddr,
			Healthy: healthy, DNSDown: !l.dnsHealthy(), RTT: rtt, Routes: len(l.routes()),
		})
	}
	return out
}
