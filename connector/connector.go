package connector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/appconnector/appconnector/connector/apptype"
	"github.com/appconnector/appconnector/connector/flowlog"
	"github.com/appconnector/appconnector/connector/logger"
	"github.com/appconnector/appconnector/connector/upstream"
	"github.com/appconnector/appconnector/connector/wireguard"
	"github.com/appconnector/appconnector/netstack"
	"github.com/appconnector/appconnector/tun"
)

// DefaultTag is the tag a connector has when Config.Tags is empty.
const DefaultTag = "tag:connector"

// Config configures a Connector. Zero values of optional fields are the
// documented defaults.
type Config struct {
	// WireGuard is the interface and its peers, as read from a wg-quick
	// file. Required; it must have at least one Address.
	WireGuard *wireguard.Config

	// ListenAddr is the host address the WireGuard UDP socket binds to
	// (the port is WireGuard.Interface.ListenPort). The zero Addr listens
	// on every address, IPv4 and IPv6.
	ListenAddr netip.Addr

	// Policy lists the apps. The connector serves those whose connectors
	// name one of Tags (or "*"). Nil serves nothing.
	Policy *apptype.Policy
	// Tags are this connector's tags. Empty means DefaultTag.
	Tags []string

	// DNSUpstreams are the DNS servers app names are resolved with, tried
	// in order: "ip:port" (plain DNS), "tls://host[:port]" (DNS over TLS,
	// port 853 by default) or "https://host[:port]/path" (DNS over HTTPS).
	// Empty means DNS questions for app names are answered SERVFAIL.
	DNSUpstreams []string
	// DNSUpstreamOptions configures the encrypted upstreams: the roots
	// their certificates are verified with, how their host names are
	// looked up.
	DNSUpstreamOptions upstream.Options
	// DNSHealthWindow: when no upstream has answered for this long,
	// /healthz answers 503. Zero means DefaultDNSHealthWindow.
	DNSHealthWindow time.Duration
	// DNSForwardAll makes the connector resolve names that belong
	// to no app too (without learning routes from them). By default they
	// are REFUSED: the connector is not an open resolver.
	DNSForwardAll bool
	// DNSTimeout bounds the upstream resolution of one question. Zero
	// means 5 seconds.
	DNSTimeout time.Duration
	// DNSTCPIdleTimeout closes a DNS-over-TCP connection from a peer that
	// sends no question for this long. Zero means 10 seconds.
	DNSTCPIdleTimeout time.Duration
	// MaxDNSTCPConns and MaxDNSTCPConnsPerPeer cap the open DNS-over-TCP
	// connections; beyond either a new one is closed at once (UDP
	// questions are not affected). Zero means the Defaults.
	MaxDNSTCPConns, MaxDNSTCPConnsPerPeer int
	// MaxAPIConns and MaxAPIConnsPerPeer cap the open connections to the
	// route API (port 80 of the tunnel addresses); beyond either a new
	// one is closed at once. MaxWatchesPerPeer caps a peer's ?watch=1
	// streams; beyond it a request gets 429. Zero means the Defaults.
	MaxAPIConns, MaxAPIConnsPerPeer, MaxWatchesPerPeer int

	// A learned route lives clamp(TTL, RouteTTLMin, RouteTTLMax) after the
	// last DNS answer that named it (TTL: that answer record's), and at
	// least RouteGrace after its last flow ended; never while a flow to
	// it is open. Zero values mean DefaultRouteTTLMax, DefaultRouteTTLMin and
	// DefaultRouteGrace; a negative RouteTTLMin gives every route
	// RouteTTLMax whatever its TTL, a negative RouteGrace no grace.
	RouteTTLMax, RouteTTLMin, RouteGrace time.Duration
	// MaxRoutes and MaxRoutesPerApp cap the learned routes; at a cap the
	// least recently seen route with no open flow is evicted: first one
	// the asking peer's questions hold, then one no flow used in the last
	// 10 minutes, then any. MaxRoutesPerPeer caps the routes one peer's
	// questions hold (beyond it, its own oldest go). Zero means the
	// Defaults (per peer: the table's cap).
	MaxRoutes, MaxRoutesPerApp, MaxRoutesPerPeer int
	// LearnRate and LearnBurst bound how fast one peer's answers may add
	// new learned addresses (a second, and at once); an answer beyond is
	// SERVFAIL. Zero means the Defaults.
	LearnRate  float64
	LearnBurst int

	// StateDir, if set, keeps the learned routes (in routes.json) and
	// each peer's last authenticated endpoint (in endpoints.json) across
	// restarts, written atomically at most every FlushInterval when they
	// changed, and on Close. On start the connector gives each peer its
	// remembered endpoint and initiates a handshake with the peers whose
	// session may still be up, so that they move to the new session at
	// once instead of after their rekey timeout. Empty keeps them in
	// memory only.
	StateDir string
	// FlushInterval is the most often the state files are written. Zero
	// means 2 seconds.
	FlushInterval time.Duration

	// Netstack holds the forwarding limits and timeouts. Its Addresses,
	// Allow, PeerOf and Logf fields are set by the Connector, and its
	// FlowRecords when FlowLog is set.
	Netstack netstack.Config

	// FlowLog, if set, receives a line for each forwarded flow when it
	// ends and every Netstack.FlowRecordInterval while it is open, and
	// the refused ones, aggregated. The caller opens and closes it (after
	// the Connector's Close).
	FlowLog *flowlog.Writer

	// HostAddrs are the connector host's own addresses. Like loopback, they
	// are forwarded to only if a route names exactly them (a /32 or /128),
	// so a route such as 10.0.0.0/8 does not open the host's own services
	// to every peer; and they are never learned from DNS.
	// cmd/appconnector fills it from the host's interfaces.
	HostAddrs []netip.Addr

	// Logger receives the connector's logs. Nil discards them.
	Logger *slog.Logger

	// ResolveTimeout bounds the lookup of peers' Endpoint host names at
	// start. Zero means 10 seconds.
	ResolveTimeout time.Duration

	// Now returns the current time; nil means time.Now. Tests set it.
	Now func() time.Time
}

// Connector is a userspace WireGuard endpoint that answers its peers' DNS
// questions for app names, learns the answers as routes, and forwards the
// peers' flows to app routes through host sockets.
type Connector struct {
	log     *slog.Logger
	tags    []string
	stack   *netstack.Stack // wg.Stack, known before wg (DNS listens on it first)
	wg      *wireguard.Device
	peers   peerTable
	flowLog *flowlog.Writer // nil: none
	table   *routeTable
	dns     *dnsService
	api     *peerAPI
	port    uint16

	routesPath string // empty: no persistence
	flushEvery time.Duration
	// endpoints remembers the peers' endpoints; nil without StateDir.
	endpoints *endpointMemory

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	bg     sync.WaitGroup // background goroutines (expiry, flushing)
	closed atomic.Bool
	// draining is set by Shutdown: app names get SERVFAIL.
	draining atomic.Bool
	// stateWrites and stateWriteErrors count saves of the learned routes.
	stateWrites, stateWriteErrors atomic.Uint64
}

// New starts a Connector: WireGuard is listening and DNS is served when
// New returns.
func New(cfg Config) (*Connector, error) {
	if cfg.WireGuard == nil {
		return nil, errors.New("connector: no wireguard config")
	}
	if len(cfg.WireGuard.Interface.Addresses) == 0 {
		return nil, errors.New("connector: the interface has no Address")
	}
	var upstreams []*upstream.Upstream
	for _, u := range cfg.DNSUpstreams {
		up, err := upstream.Parse(u, cfg.DNSUpstreamOptions)
		if err != nil {
			return nil, fmt.Errorf("connector: %w", err)
		}
		upstreams = append(upstreams, up)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Connector{log: log, tags: cfg.Tags, peers: newPeerTable(cfg.WireGuard.Peers)}
	if len(c.tags) == 0 {
		c.tags = []string{DefaultTag}
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())

	own := map[netip.Addr]bool{}
	for _, a := range cfg.HostAddrs {
		own[a.Unmap().WithZone("")] = true
	}
	var ownNets []netip.Prefix
	for _, p := range cfg.WireGuard.Interface.Addresses {
		own[p.Addr().Unmap()] = true
		ownNets = append(ownNets, p.Masked())
	}
	c.table = newRouteTable(tableConfig{
		ttl:        orDefault(cfg.RouteTTLMax, DefaultRouteTTLMax),
		ttlMin:     orDefault(cfg.RouteTTLMin, DefaultRouteTTLMin),
		grace:      max(orDefault(cfg.RouteGrace, DefaultRouteGrace), 0),
		maxLearned: orDefault(cfg.MaxRoutes, DefaultMaxRoutes),
		maxPerApp:  orDefault(cfg.MaxRoutesPerApp, DefaultMaxRoutesPerApp),
		maxPerPeer: cfg.MaxRoutesPerPeer,
		hostAddrs:  cfg.HostAddrs,
		own:        own,
		ownNets:    ownNets,
		now:        cfg.Now,
		inUse:      func(a netip.Addr) bool { return c.stack != nil && c.stack.FlowsTo(a) > 0 },
		isLocal:    hostHasAddr,
	})
	c.SetPolicy(cfg.Policy)
	// Learned routes come back before the stack accepts any traffic.
	c.flushEvery = orDefault(cfg.FlushInterval, 2*time.Second)
	if cfg.StateDir != "" {
		if err := PrepareStateDir(cfg.StateDir); err != nil {
			c.cancel()
			return nil, fmt.Errorf("connector: %w", err)
		}
		c.routesPath = filepath.Join(cfg.StateDir, routesFileName)
		now := time.Now
		if cfg.Now != nil {
			now = cfg.Now
		}
		rs, err := loadRoutes(c.routesPath, now())
		if errors.Is(err, errStateUnreadable) {
			// Writing would replace a file we could not read.
			log.Error(err.Error() + "; learned routes will not be saved")
			c.routesPath = ""
		} else if err != nil {
			log.Error(err.Error())
		}
		if len(rs) > 0 {
			kept := c.table.restore(rs)
			log.Info("restored learned routes", "kept", kept, "stored", len(rs), "file", c.routesPath)
		}
		cfg.WireGuard = c.loadEndpoints(filepath.Join(cfg.StateDir, endpointsFileName), cfg.WireGuard, now())
	}

	nc := cfg.Netstack
	// A flow is allowed by its destination address alone, whatever its
	// protocol or port: an echo request (netstack.ICMP) to an app's
	// address is allowed exactly when a TCP or UDP flow to it would be.
	nc.Allow = func(f netstack.Flow) bool { return c.table.allow(c.peers.lookup(f.Src.Addr()), f.Dst.Addr()) }
	nc.PeerOf = func(a netip.Addr) string { return c.peers.lookup(a).key }
	nc.FlowsEnded = c.table.flowEnded
	if cfg.FlowLog != nil {
		c.flowLog = cfg.FlowLog
		nc.FlowRecords = c.flowRecord
	}
	nc.Logf = logger.Slog(log.With("component", "netstack"), slog.LevelInfo)
	wlog := log.With("component", "wireguard")
	ctx, cancel := context.WithTimeout(c.ctx, orDefault(cfg.ResolveTimeout, 10*time.Second))
	defer cancel()
	dev, err := wireguard.NewDevice(ctx, wireguard.DeviceConfig{
		Config:     cfg.WireGuard,
		ListenAddr: cfg.ListenAddr,
		Stack:      nc,
		// wireguard-go logs some events per packet (a bad MAC1, a
		// packet from an unknown peer): a flood must not flood the log.
		Verbosef: logger.RateLimit(logger.Slog(wlog, slog.LevelDebug), 10, 50),
		Errorf:   logger.Slog(wlog, slog.LevelError),
		// DNS and the route API listen before the first packet arrives.
		Listen: func(st *netstack.Stack) (func(), error) {
			c.stack = st
			if err := c.startDNS(cfg, upstreams); err != nil {
				return nil, err
			}
			return func() {
				c.dns.close()
				c.api.close()
			}, nil
		},
	})
	if err != nil {
		for _, up := range upstreams {
			up.Close()
		}
		return nil, fmt.Errorf("connector: %w", err)
	}
	c.wg, c.port = dev, dev.Port()
	c.greetPeers()
	c.log.Info("wireguard up", "listen", netip.AddrPortFrom(cfg.ListenAddr, c.port).String(),
		"addresses", fmt.Sprint(cfg.WireGuard.Interface.Addresses), "peers", len(cfg.WireGuard.Peers))
	c.bg.Add(1)
	go c.maintain()
	if len(upstreams) > 0 {
		c.bg.Add(1)
		go func() {
			defer c.bg.Done()
			c.dns.probe(c.ctx)
		}()
	}
	c.bg.Add(1)
	go c.prefetch()
	return c, nil
}

func orDefault[T comparable](v, d T) T {
	var zero T
	if v == zero {
		return d
	}
	return v
}

// startDNS listens on port 53 (UDP and TCP) of every tunnel address, and
// serves the route API on port 80.
func (c *Connector) startDNS(cfg Config, upstreams []*upstream.Upstream) error {
	dlog := c.log.With("component", "dns")
	c.dns = &dnsService{
		c:         c,
		upstreams: upstreams,
		started:   time.Now(),
		healthWin: orDefault(cfg.DNSHealthWindow, DefaultDNSHealthWindow),
		forward:   cfg.DNSForwardAll,
		timeout:   orDefault(cfg.DNSTimeout, defaultDNSTimeout),
		logf:      logger.RateLimit(logger.Slog(dlog, slog.LevelInfo), 5, 10),
		warnf:     logger.Slog(dlog, slog.LevelWarn),
		tcpIdle:   orDefault(cfg.DNSTCPIdleTimeout, defaultDNSTCPIdle),
		tcpConns: connLimit{
			max:     orDefault(cfg.MaxDNSTCPConns, DefaultMaxDNSTCPConns),
			perPeer: orDefault(cfg.MaxDNSTCPConnsPerPeer, DefaultMaxDNSTCPConnsPerPeer),
		},
		questions: connLimit{max: maxDNSInFlight, perPeer: maxDNSInFlightPerPeer},
		udpBusy:   connLimit{max: maxDNSInFlight, perPeer: maxDNSInFlightPerPeer},
		learnRate: netstack.NewPeerRates(1, orDefault(cfg.LearnRate, DefaultLearnRate), orDefault(cfg.LearnBurst, DefaultLearnBurst)),
		learnMax:  orDefault(cfg.LearnBurst, DefaultLearnBurst),
		stale:     staleCache{max: orDefault(cfg.MaxRoutes, DefaultMaxRoutes)},
		now:       c.table.cfg.now,
	}
	var pcs []net.PacketConn
	var lns, apiLns []net.Listener
	fail := func(err error) error {
		for _, pc := range pcs {
			pc.Close()
		}
		for _, ln := range append(lns, apiLns...) {
			ln.Close()
		}
		return err
	}
	for _, p := range cfg.WireGuard.Interface.Addresses {
		ap := netip.AddrPortFrom(p.Addr().Unmap(), 53)
		pc, err := c.stack.ListenUDP(ap)
		if err != nil {
			return fail(fmt.Errorf("dns: %w", err))
		}
		pcs = append(pcs, pc)
		ln, err := c.stack.ListenTCP(ap)
		if err != nil {
			return fail(fmt.Errorf("dns: %w", err))
		}
		lns = append(lns, ln)
		if ln, err = c.stack.ListenTCP(netip.AddrPortFrom(ap.Addr(), 80)); err != nil {
			return fail(fmt.Errorf("route api: %w", err))
		}
		apiLns = append(apiLns, ln)
	}
	c.startPeerAPI(apiLns, &cfg)
	c.dns.start(pcs, lns)
	return nil
}

// expireEvery is how often expired learned routes are dropped: a route
// outlives its lifetime by at most this (less when lifetimes are short).
const expireEvery = 5 * time.Second

// maintain drops expired learned routes and writes the learned routes
// when they changed, at most every flushEvery.
func (c *Connector) maintain() {
	defer c.bg.Done()
	every := expireEvery
	if m := c.table.cfg.ttlMin; m > 0 {
		every = min(every, max(m/4, 50*time.Millisecond))
	}
	expire := time.NewTicker(every)
	defer expire.Stop()
	flush := time.NewTicker(c.flushEvery)
	defer flush.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-expire.C:
			c.table.expire()
		case <-flush.C:
			c.flush()
			c.flushEndpoints(c.readPeers())
		}
	}
}

// flush writes the learned routes if they changed since the last write.
func (c *Connector) flush() {
	if c.routesPath == "" {
		return
	}
	rs, changed := c.table.snapshot(false)
	if !changed {
		return
	}
	if err := saveRoutes(c.routesPath, rs); err != nil {
		c.stateWriteErrors.Add(1)
		c.table.markDirty() // try again next time
		c.log.Error(err.Error())
		return
	}
	c.stateWrites.Add(1)
}

// flushEndpoints writes the peers' endpoints if they changed since the
// last write; peers and err are the device's state (readPeers).
func (c *Connector) flushEndpoints(peers []peerState, err error) {
	if c.endpoints == nil {
		return
	}
	if err != nil {
		c.log.Error("save peer endpoints: " + err.Error())
		return
	}
	wrote, err := c.endpoints.flush(peers)
	switch {
	case err != nil:
		c.stateWriteErrors.Add(1)
		c.log.Error(err.Error())
	case wrote:
		c.stateWrites.Add(1)
	}
}

// Port returns the UDP port WireGuard listens on.
func (c *Connector) Port() uint16 { return c.port }

// SetPolicy replaces the policy; nil serves nothing. New flows and DNS
// questions see the new apps at once; established flows are not touched.
// Learned routes of apps or names that left the policy are withdrawn.
func (c *Connector) SetPolicy(p *apptype.Policy) {
	c.table.setApps(p.AppsFor(c.tags))
}

// Routes lists every route: configured, learned, pending and coalesced.
func (c *Connector) Routes() []apptype.Route {
	_, rs := c.table.routes()
	return rs
}

// Advertised returns what the route API tells the peer with public key
// peerKey (base64): the routes and domains of the apps it may use.
func (c *Connector) Advertised(peerKey string) apptype.RouteSet {
	return routeSet(c.table.advertised(c.peers.byKey(peerKey)))
}

// Approve approves the pending learned routes inside prefix, or all of
// them if prefix is the zero Prefix, and returns how many.
func (c *Connector) Approve(prefix netip.Prefix) int { return c.table.approve(prefix) }

// Stats are the connector's counters.
type Stats struct {
	Tun      tun.Stats
	Netstack netstack.Stats
	Routes   tableStats
	DNS      struct {
		Answered, Refused, ServFail, Forwarded, FormErr, Limited uint64
		Stale                                                    uint64 // answered from the last answer: every upstream failed
		TCPConns, TCPConnsRefused                                uint64 // DNS-over-TCP connections open now, and closed at a cap
	}
	// API is the route API: connections and watch streams open now, and
	// refused at their caps.
	API struct {
		Conns, ConnsRefused, Watches, WatchesRefused uint64
	}
}

// TCPStates counts the userspace stack's TCP endpoints by state. It walks
// every endpoint under the stack's lock: for tests and diagnostics.
func (c *Connector) TCPStates() map[string]int { return c.stack.TCPStates() }

// Stats returns a snapshot of the counters.
func (c *Connector) Stats() Stats {
	st := Stats{Tun: c.wg.Tun.Stats(), Netstack: c.stack.Stats(), Routes: c.table.statsSnapshot()}
	d := &c.dns.stats
	st.DNS.Answered, st.DNS.Refused, st.DNS.ServFail = d.Answered.Load(), d.Refused.Load(), d.ServFail.Load()
	st.DNS.Forwarded, st.DNS.FormErr, st.DNS.Limited = d.Forwarded.Load(), d.FormErr.Load(), d.Limited.Load()
	st.DNS.Stale = d.Stale.Load()
	st.DNS.TCPConns, st.DNS.TCPConnsRefused = c.dns.tcpConns.openNow(), c.dns.tcpConns.refused.Load()
	if a := c.api; a != nil {
		st.API.Conns, st.API.ConnsRefused = a.conns.openNow(), a.conns.refused.Load()
		st.API.Watches, st.API.WatchesRefused = a.watches.openNow(), a.watches.refused.Load()
	}
	return st
}

// Shutdown drains the connector, then closes it. New flows are refused at
// once (TCP with a RST, UDP with ICMP port unreachable, echo requests
// with ICMP administratively prohibited) and questions for
// app names get SERVFAIL, so clients move to another connector; open TCP
// flows go on until they end or ctx is done. Then Close resets what is
// left, UDP flows included (they have no end to wait for), and saves the
// learned routes. It returns ctx's error if TCP flows were still open at
// its end.
func (c *Connector) Shutdown(ctx context.Context) error {
	c.draining.Store(true)
	c.stack.StopAccepting()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	var err error
	for err == nil && c.stack.Stats().OpenTCPFlows > 0 {
		select {
		case <-ctx.Done():
			err = fmt.Errorf("shutdown: %d TCP flows still open: %w", c.stack.Stats().OpenTCPFlows, ctx.Err())
		case <-t.C:
		}
	}
	c.Close()
	return err
}

// Close stops DNS and forwarding, aborts open flows, closes the WireGuard
// device and its socket, and waits for every goroutine to end. It is
// idempotent.
func (c *Connector) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	c.cancel()
	c.dns.close()
	c.api.close()
	c.stack.Close()
	c.bg.Wait()
	c.dns.closeUpstreams()
	// The device forgets its peers when it closes: read them first.
	peers, perr := c.readPeers()
	c.wg.Close() // closes the tun device and the bind
	c.flush()
	c.flushEndpoints(peers, perr)
	return nil
}

// peerTable maps an inner source address to the peer whose AllowedIPs
// hold it (longest prefix wins).
type peerTable struct {
	entries []peerEntry // longest prefix first
	keys    map[string]peerID
}

type peerEntry struct {
	prefix netip.Prefix
	peer   peerID
}

func newPeerTable(peers []wireguard.Peer) peerTable {
	t := peerTable{keys: map[string]peerID{}}
	// WireGuard gives a prefix listed by two peers to the one configured
	// last; so does this table.
	owner := map[netip.Prefix]peerID{}
	for _, p := range peers {
		id := peerID{key: p.PublicKey.String(), tags: p.Tags}
		t.keys[id.key] = id
		for _, pfx := range p.AllowedIPs {
			owner[pfx.Masked()] = id
		}
	}
	for pfx, id := range owner {
		t.entries = append(t.entries, peerEntry{pfx, id})
	}
	slices.SortFunc(t.entries, func(a, b peerEntry) int {
		if d := b.prefix.Bits() - a.prefix.Bits(); d != 0 {
			return d
		}
		return a.prefix.Addr().Compare(b.prefix.Addr())
	})
	return t
}

// lookup returns the peer that owns source address a. WireGuard has
// already dropped packets whose source is outside the sender's AllowedIPs,
// so a miss means a local source; it gets an identity no app restricted
// to named peers accepts.
func (t peerTable) lookup(a netip.Addr) peerID {
	for _, e := range t.entries {
		if e.prefix.Contains(a) {
			return e.peer
		}
	}
	return peerID{key: a.String()}
}

// byKey returns the peer with public key k (base64).
func (t peerTable) byKey(k string) peerID {
	if p, ok := t.keys[k]; ok {
		return p
	}
	return peerID{key: k}
}
