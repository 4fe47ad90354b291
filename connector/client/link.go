package client

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/appconnector/appconnector/connector/apptype"
	"github.com/appconnector/appconnector/connector/logger"
	"github.com/appconnector/appconnector/connector/upstream"
	"github.com/appconnector/appconnector/connector/wireguard"
)

// A link is the client's tunnel to one peer: its own WireGuard device,
// UDP socket and userspace stack. Giving each connector its own device
// lets the client choose, per flow, which connector carries it, and move
// new flows to another connector at once when one fails.
type link struct {
	c    *Client
	peer wireguard.Peer
	name string // for logs: the peer's public key, shortened
	// dnsAddr is the connector's tunnel address (from [Interface] DNS);
	// invalid for a peer that is not a connector (an exit peer).
	dnsAddr netip.Addr
	// exit4 and exit6: the peer's AllowedIPs hold an IPv4 / IPv6 default
	// route, so it carries destinations of no app of that family.
	exit4, exit6 bool

	dev  *wireguard.Device
	http *http.Client

	flowsTotal atomic.Uint64 // flows opened through the link

	mu sync.Mutex // guards the fields after it
	// static are the peer's AllowedIPs from the config; advertised come
	// from the connector's route API; pinned are addresses the connector
	// answered for app names, routed here until they expire.
	static     []netip.Prefix
	advertised []netip.Prefix
	pinned     map[netip.Addr]time.Time
	domains    *apptype.DomainSet
	domainList []string
	healthy    bool
	// dnsDown is set while the connector says its DNS upstreams fail
	// (its probe answer carries Extended DNS Error 14): names go to
	// another connector first, flows to its routes are not touched.
	dnsDown  bool
	rtt      time.Duration
	failures int
	// announced is the state last logged: 0 none yet, 1 up, -1 down.
	announced int8
	// failovers counts the times the link was found down; probeRTT
	// holds the probes' round trips; routesVersion is the version of the
	// connector's last route set.
	failovers     uint64
	probeRTT      histogram
	routesVersion uint64
	conns         map[*trackedConn]struct{}
	// ready is closed when the first route set arrived.
	ready     chan struct{}
	readyOnce sync.Once
	// stopWatch ends the current route watch (set while one runs).
	stopWatch context.CancelFunc
}

func newLink(c *Client, peer wireguard.Peer, dnsAddr netip.Addr) (*link, error) {
	l := &link{
		c: c, peer: peer, dnsAddr: dnsAddr,
		name:    peer.PublicKey.String()[:8],
		static:  peer.AllowedIPs,
		pinned:  map[netip.Addr]time.Time{},
		conns:   map[*trackedConn]struct{}{},
		healthy: true, // until a probe says otherwise
		ready:   make(chan struct{}),
	}
	for _, p := range peer.AllowedIPs {
		if p.Bits() == 0 {
			l.exit4 = l.exit4 || p.Addr().Is4()
			l.exit6 = l.exit6 || p.Addr().Is6()
		}
	}
	ctx, cancel := context.WithTimeout(c.ctx, 10*time.Second)
	defer cancel()
	// Inside the link, every destination goes to its one peer: the client
	// has already chosen this link for the flow.
	p := peer
	p.AllowedIPs = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	ifc := c.cfg.WireGuard.Interface
	wlog := c.log.With("component", "wireguard", "peer", l.name)
	dev, err := wireguard.NewDevice(ctx, wireguard.DeviceConfig{
		Config: &wireguard.Config{
			Interface: wireguard.Interface{PrivateKey: ifc.PrivateKey, Addresses: ifc.Addresses, MTU: ifc.MTU},
			Peers:     []wireguard.Peer{p},
		},
		ListenAddr: c.cfg.ListenAddr,
		Verbosef:   logger.Slog(wlog, slog.LevelDebug),
		Errorf:     logger.Slog(wlog, slog.LevelError),
	})
	if err != nil {
		return nil, fmt.Errorf("peer %s: %w", l.name, err)
	}
	l.dev = dev
	l.http = &http.Client{Transport: &http.Transport{
		DialContext:       l.dev.Stack.DialContext,
		DisableKeepAlives: true,
		Proxy:             nil,
	}}
	return l, nil
}

// run probes the connector and follows its routes until the client
// closes.
func (l *link) run() {
	if !l.dnsAddr.IsValid() {
		return // an exit peer: nothing to probe or watch
	}
	if l.c.goIfOpen(l.watchRoutes) != nil {
		return
	}
	l.probeLoop()
}

// probeLoop asks the connector a DNS question every ProbeInterval. Two
// misses in a row mark the link down: its open flows are closed at once
// and new ones go elsewhere. An answer marks it up again.
func (l *link) probeLoop() {
	t := time.NewTicker(l.c.cfg.ProbeInterval)
	defer t.Stop()
	lastIn := l.dev.Tun.Stats().InboundPackets
	for {
		start := time.Now()
		dnsDown, err := l.probe()
		// A connector that is busy may answer late, but one that sends
		// anything at all is alive: only silence counts as a miss.
		in := l.dev.Tun.Stats().InboundPackets
		heard := in != lastIn
		lastIn = in
		l.mu.Lock()
		wasHealthy := l.healthy
		if err != nil && heard {
			l.failures = 0
		} else if err == nil {
			l.failures = 0
			l.healthy = true
			if dnsDown != l.dnsDown {
				l.c.log.Warn("connector DNS health changed", "peer", l.name, "dns_upstreams_failing", dnsDown)
			}
			l.dnsDown = dnsDown
			rtt := time.Since(start)
			l.probeRTT.observe(rtt)
			if l.rtt == 0 {
				l.rtt = rtt
			} else {
				l.rtt = (l.rtt*7 + rtt) / 8
			}
		} else {
			l.failures++
			if l.failures >= 2 {
				l.healthy = false
			}
		}
		healthy := l.healthy
		var dead []*trackedConn
		if wasHealthy && !healthy {
			l.failovers++
			for tc := range l.conns {
				dead = append(dead, tc)
			}
			if l.stopWatch != nil {
				l.stopWatch() // a stream from a dead connector never ends by itself
			}
		}
		var announce int8
		switch {
		case err == nil && l.announced != 1:
			announce = 1
		case !healthy && l.announced != -1:
			announce = -1
		}
		if announce != 0 {
			l.announced = announce
		}
		rtt := l.rtt
		l.mu.Unlock()
		switch announce {
		case 1:
			l.c.log.Info("connector up", l.summary(rtt)...)
		case -1:
			l.c.log.Warn("connector down", append(l.summary(rtt), "err", err)...)
		}
		for _, tc := range dead {
			tc.reset() // fail fast rather than hang on a dead connector
		}
		if wasHealthy && !healthy {
			// Drop the WireGuard session: if the connector restarted, it
			// no longer knows our keys, and wireguard-go would wait 15 s
			// of silence before a new handshake. The next probe starts
			// one at once.
			l.dev.Down()
			if l.c.ctx.Err() == nil {
				l.dev.Up()
			}
		}
		select {
		case <-l.c.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// summary is the link's one-line description for the log: which
// connector (key, tunnel address, UDP endpoint) and its smoothed probe
// round trip.
func (l *link) summary(rtt time.Duration) []any {
	return []any{"peer", l.name, "tunnel", l.dnsAddr, "endpoint", l.peer.Endpoint, "rtt", rtt.Round(10 * time.Microsecond)}
}

// probe sends one question the connector answers itself (REFUSED: no app
// has the name), so only the tunnel and the connector are measured. It
// reports whether the answer says the connector's DNS upstreams fail
// (Extended DNS Error 14, Not Ready).
func (l *link) probe() (dnsDown bool, err error) {
	ctx, cancel := context.WithTimeout(l.c.ctx, l.c.cfg.ProbeTimeout)
	defer cancel()
	m := new(dns.Msg)
	m.SetQuestion("appconnector-probe.invalid.", dns.TypeA)
	m.SetEdns0(1232, false)
	r, err := l.exchange(ctx, m)
	if err != nil {
		return false, err
	}
	if opt := r.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if ede, ok := o.(*dns.EDNS0_EDE); ok && ede.InfoCode == dns.ExtendedErrorCodeNotReady {
				return true, nil
			}
		}
	}
	return false, nil
}

// exchange sends a DNS message to the connector through the tunnel (UDP,
// then TCP if the answer was truncated).
func (l *link) exchange(ctx context.Context, m *dns.Msg) (*dns.Msg, error) {
	r, err := upstream.ExchangeOver(ctx, l.dev.Stack.DialContext, netip.AddrPortFrom(l.dnsAddr, 53).String(), m)
	if err != nil {
		return nil, fmt.Errorf("ask connector %s: %w", l.name, err)
	}
	return r, nil
}

// watchRoutes follows the connector's route API, reconnecting after a
// second whenever the stream ends.
func (l *link) watchRoutes() {
	url := "http://" + netip.AddrPortFrom(l.dnsAddr, 80).String() + "/v1/routes?watch=1&diff=1"
	for {
		if err := l.watchOnce(url); err != nil && l.c.ctx.Err() == nil {
			l.c.log.Debug("route watch ended", "peer", l.name, "err", err)
		}
		select {
		case <-l.c.ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// watchIdle ends a route watch that has been silent this long: the
// connector repeats its state every 25 s, so silence means it is gone.
const watchIdle = time.Minute

func (l *link) watchOnce(url string) error {
	ctx, cancel := context.WithCancel(l.c.ctx)
	defer cancel()
	l.mu.Lock()
	l.stopWatch = cancel
	l.mu.Unlock()
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return err
	}
	resp, err := l.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("route api: %s", resp.Status)
	}
	idle := time.AfterFunc(watchIdle, cancel)
	defer idle.Stop()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	// The first line is the whole set; each later one what changed (a
	// connector that predates diffs sends whole sets: they have no
	// "full" mark and are taken as such).
	var cur []netip.Prefix
	var curDomains []string
	for sc.Scan() {
		idle.Reset(watchIdle)
		var line struct {
			apptype.RouteSet
			Added   []netip.Prefix `json:"added"`
			Removed []netip.Prefix `json:"removed"`
			Domains *[]string      `json:"domains"` // hides RouteSet's: absent means unchanged
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			return fmt.Errorf("route api: %w", err)
		}
		rs := line.RouteSet
		switch {
		case line.Full || line.Routes != nil:
			cur = line.Routes
			curDomains = nil
			if line.Domains != nil {
				curDomains = *line.Domains
			}
		default:
			cur = applyDiff(cur, line.Added, line.Removed)
			if line.Domains != nil {
				curDomains = *line.Domains
			}
		}
		rs.Routes, rs.Domains = cur, curDomains
		l.mu.Lock()
		changed := !slices.Equal(l.advertised, rs.Routes)
		domainsChanged := !slices.Equal(l.domainList, rs.Domains)
		l.advertised = rs.Routes
		l.routesVersion = rs.Version
		if domainsChanged {
			l.domainList = rs.Domains
			l.domains = apptype.NewDomainSet(rs.Domains)
		}
		l.mu.Unlock()
		if domainsChanged {
			// Names cached as the host's may be an app's now, or the
			// reverse.
			l.c.cache.clear()
		}
		l.readyOnce.Do(func() { close(l.ready) })
		if changed || domainsChanged {
			l.c.routesVersion.Add(1)
			l.c.log.Debug("routes", "peer", l.name, "version", rs.Version, "routes", len(rs.Routes), "domains", strings.Join(rs.Domains, ","))
		}
	}
	return sc.Err()
}

// applyDiff returns routes less removed, plus added, sorted, as a new
// slice.
func applyDiff(routes, added, removed []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(routes)+len(added))
	for _, r := range routes {
		if !slices.Contains(removed, r) {
			out = append(out, r)
		}
	}
	out = append(out, added...)
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(out)
}

// match returns the length of the longest of this link's routes that
// holds dst, or -1.
func (l *link) match(dst netip.Addr, now time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if exp, ok := l.pinned[dst]; ok {
		if now.Before(exp) {
			return dst.BitLen()
		}
		delete(l.pinned, dst)
	}
	best := -1
	for _, set := range [][]netip.Prefix{l.static, l.advertised} {
		for _, p := range set {
			if p.Contains(dst) && p.Bits() > best {
				best = p.Bits()
			}
		}
	}
	return best
}

// maxPins bounds the pinned addresses of a link.
const maxPins = 16384

// pin routes addrs through this link until ttl passes: the connector
// answered them for an app name, so it has (or has refused) the route.
func (l *link) pin(addrs []netip.Addr, ttl time.Duration) {
	now := time.Now()
	exp := now.Add(ttl)
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.pinned)+len(addrs) > maxPins {
		for a, e := range l.pinned {
			if now.After(e) {
				delete(l.pinned, a)
			}
		}
		if len(l.pinned)+len(addrs) > maxPins {
			clear(l.pinned) // still full: the route API has the live ones
		}
	}
	for _, a := range addrs {
		if a.IsUnspecified() || a.IsMulticast() {
			continue
		}
		l.pinned[a] = exp
	}
}

func (l *link) ownsName(name string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.domains.Contains(name)
}

// dnsHealthy reports whether the connector last said its DNS works.
func (l *link) dnsHealthy() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.dnsDown
}

func (l *link) state() (healthy bool, rtt time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.healthy, l.rtt
}

// routes returns what this link routes now.
func (l *link) routes() []netip.Prefix {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := slices.Concat(l.static, l.advertised)
	now := time.Now()
	for a, exp := range l.pinned {
		if now.Before(exp) {
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	return out
}

// dial opens a flow through the link and tracks it, so it is closed at
// once if the link goes down.
func (l *link) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := l.dev.Stack.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, l: l}
	l.mu.Lock()
	if !l.healthy {
		// The probe loop closed this link's flows while we dialed.
		l.mu.Unlock()
		c.Close()
		return nil, fmt.Errorf("connector %s went down", l.name)
	}
	l.conns[tc] = struct{}{}
	l.mu.Unlock()
	l.flowsTotal.Add(1)
	return tc, nil
}

func (l *link) close() { l.dev.Close() }

// errTunnelDown is what reads and writes on a flow return after its
// connector was found dead: a reset, not an end of stream.
var errTunnelDown = fmt.Errorf("connector down: %w", syscall.ECONNRESET)

// trackedConn is a flow through a link.
type trackedConn struct {
	net.Conn
	l      *link
	once   sync.Once
	killed atomic.Bool
}

// reset ends the flow because its connector is down.
func (tc *trackedConn) reset() {
	tc.killed.Store(true)
	tc.Close()
}

func (tc *trackedConn) Read(b []byte) (int, error) {
	n, err := tc.Conn.Read(b)
	if err != nil && tc.killed.Load() {
		err = errTunnelDown
	}
	return n, err
}

func (tc *trackedConn) Write(b []byte) (int, error) {
	n, err := tc.Conn.Write(b)
	if err != nil && tc.killed.Load() {
		err = errTunnelDown
	}
	return n, err
}

func (tc *trackedConn) Close() error {
	err := tc.Conn.Close()
	tc.once.Do(func() {
		tc.l.mu.Lock()
		delete(tc.l.conns, tc)
		tc.l.mu.Unlock()
	})
	return err
}

// CloseWrite half-closes a TCP flow.
func (tc *trackedConn) CloseWrite() error {
	if cw, ok := tc.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
