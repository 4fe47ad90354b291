package connector

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go4.org/netipx"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"

	"github.com/appconnector/appconnector/connector/wgbind"
	"github.com/appconnector/appconnector/connector/wgconf"
	"github.com/appconnector/appconnector/netstack"
	"github.com/appconnector/appconnector/tun"
)

// Config configures a Connector.
type Config struct {
	// WireGuard is the interface and its peers, as read from a wg-quick
	// file. Required; it must have at least one Address.
	WireGuard *wgconf.Config

	// ListenAddr is the host address the WireGuard UDP socket binds to
	// (the port is WireGuard.Interface.ListenPort). The zero Addr listens
	// on every address, IPv4 and IPv6.
	ListenAddr netip.Addr

	// Policy lists the apps. Flows are forwarded only to destinations
	// inside the routes of the apps. Nil forwards nothing.
	Policy *Policy

	// Netstack holds the forwarding limits and timeouts. Its Addresses,
	// Allow, PeerOf and Logf fields are set by the Connector.
	Netstack netstack.Config

	// HostAddrs are the connector host's own addresses. Like loopback, they
	// are forwarded to only if a route names exactly them (a /32 or /128),
	// so a route such as 10.0.0.0/8 does not open the host's own services
	// to every peer. cmd/appconnector fills it from the host's interfaces.
	HostAddrs []netip.Addr

	// Logger receives the connector's logs. Nil discards them.
	Logger *slog.Logger

	// ResolveTimeout bounds the lookup of peers' Endpoint host names at
	// start. Zero means 10 seconds.
	ResolveTimeout time.Duration
}

// Connector is a userspace WireGuard endpoint whose peers' flows are
// forwarded to the routes of the policy's apps through host sockets.
type Connector struct {
	log       *slog.Logger
	hostAddrs []netip.Addr
	tun       *tun.Device
	stack     *netstack.Stack
	wg        *device.Device
	peers     peerTable
	routes    atomic.Pointer[netipx.IPSet]
	port      uint16
	closed    atomic.Bool
}

// New starts a Connector: the WireGuard device is up and listening when New
// returns.
func New(cfg Config) (*Connector, error) {
	if cfg.WireGuard == nil {
		return nil, errors.New("connector: no wireguard config")
	}
	if len(cfg.WireGuard.Interface.Addresses) == 0 {
		return nil, errors.New("connector: the interface has no Address")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Connector{log: log, hostAddrs: cfg.HostAddrs, peers: newPeerTable(cfg.WireGuard.Peers)}
	c.SetPolicy(cfg.Policy)

	var err error
	c.tun, err = tun.New(tun.Config{MTU: cfg.WireGuard.Interface.MTU})
	if err != nil {
		return nil, fmt.Errorf("connector: %w", err)
	}
	nc := cfg.Netstack
	nc.Addresses = cfg.WireGuard.Interface.Addresses
	nc.Allow = c.allow
	nc.PeerOf = c.peers.lookup
	flowLog := log.With("component", "netstack")
	nc.Logf = func(format string, args ...any) { flowLog.Info(fmt.Sprintf(format, args...)) }
	c.stack, err = netstack.New(c.tun, nc)
	if err != nil {
		c.tun.Close()
		return nil, fmt.Errorf("connector: %w", err)
	}

	var bind conn.Bind
	if cfg.ListenAddr.IsValid() {
		bind, err = wgbind.New(cfg.ListenAddr)
		if err != nil {
			c.stack.Close()
			c.tun.Close()
			return nil, fmt.Errorf("connector: %w", err)
		}
	} else {
		bind = conn.NewDefaultBind()
	}
	wlog := log.With("component", "wireguard")
	c.wg = device.NewDevice(c.tun, bind, &device.Logger{
		Verbosef: func(format string, args ...any) { wlog.Debug(fmt.Sprintf(format, args...)) },
		Errorf:   func(format string, args ...any) { wlog.Error(fmt.Sprintf(format, args...)) },
	})
	if err := c.start(cfg); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Connector) start(cfg Config) error {
	timeout := cfg.ResolveTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	uapi, err := cfg.WireGuard.UAPI(ctx, nil)
	if err != nil {
		return fmt.Errorf("connector: %w", err)
	}
	if err := c.wg.IpcSet(uapi); err != nil {
		return fmt.Errorf("connector: configure wireguard: %w", err)
	}
	if err := c.wg.Up(); err != nil {
		return fmt.Errorf("connector: wireguard up: %w", err)
	}
	port, err := c.listenPort()
	if err != nil {
		return fmt.Errorf("connector: %w", err)
	}
	c.port = port
	c.log.Info("wireguard up", "listen", netip.AddrPortFrom(cfg.ListenAddr, port).String(),
		"addresses", fmt.Sprint(cfg.WireGuard.Interface.Addresses), "peers", len(cfg.WireGuard.Peers))
	return nil
}

// listenPort asks the device which UDP port it listens on.
func (c *Connector) listenPort() (uint16, error) {
	text, err := c.wg.IpcGet()
	if err != nil {
		return 0, fmt.Errorf("read wireguard state: %w", err)
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "listen_port="); ok {
			p, err := strconv.ParseUint(v, 10, 16)
			if err != nil {
				return 0, fmt.Errorf("read wireguard listen port %q: %w", v, err)
			}
			return uint16(p), nil
		}
	}
	return 0, errors.New("wireguard reported no listen port")
}

// Port returns the UDP port WireGuard listens on.
func (c *Connector) Port() uint16 { return c.port }

// SetPolicy replaces the policy; nil forwards nothing. New flows see the new
// routes at once; established flows are not touched.
func (c *Connector) SetPolicy(p *Policy) {
	var routes []netip.Prefix
	if p != nil {
		// Each app's own prefixes, not the merged union: a route that
		// names a guarded range must be seen even when a wider route of
		// another app covers it.
		for _, a := range p.Apps {
			routes = append(routes, a.Routes...)
		}
	}
	c.routes.Store(forwardSet(routes, c.hostAddrs))
}

// Routes returns the prefixes flows may be forwarded to: the apps' routes
// without the ranges that are never forwarded (see forwardSet).
func (c *Connector) Routes() []netip.Prefix { return c.routes.Load().Prefixes() }

// allow is the forwarding policy: the destination must be inside a route.
func (c *Connector) allow(f netstack.Flow) bool {
	return c.routes.Load().Contains(f.Dst.Addr())
}

// Stats are the connector's counters.
type Stats struct {
	Tun      tun.Stats
	Netstack netstack.Stats
}

// Stats returns a snapshot of the counters.
func (c *Connector) Stats() Stats {
	return Stats{Tun: c.tun.Stats(), Netstack: c.stack.Stats()}
}

// Close stops forwarding, aborts open flows, closes the WireGuard device
// and its socket, and waits for every goroutine to end. It is idempotent.
func (c *Connector) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	c.stack.Close()
	c.wg.Close() // closes the tun device and the bind
	return nil
}

// peerTable maps an inner source address to the peer whose AllowedIPs
// hold it (longest prefix wins), for per-peer limits.
type peerTable struct {
	entries []peerEntry // longest prefix first
}

type peerEntry struct {
	prefix netip.Prefix
	key    string
}

func newPeerTable(peers []wgconf.Peer) peerTable {
	var t peerTable
	for _, p := range peers {
		for _, pfx := range p.AllowedIPs {
			t.entries = append(t.entries, peerEntry{pfx.Masked(), p.PublicKey.String()})
		}
	}
	slices.SortStableFunc(t.entries, func(a, b peerEntry) int { return b.prefix.Bits() - a.prefix.Bits() })
	return t
}

func (t peerTable) lookup(a netip.Addr) string {
	for _, e := range t.entries {
		if e.prefix.Contains(a) {
			return e.key
		}
	}
	return a.String()
}
