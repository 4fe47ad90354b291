// Package netstack runs a userspace TCP/IP stack (gVisor) on a tun.Device
// and forwards the TCP and UDP flows and the ICMP echo requests (pings)
// that arrive on it through the host's ordinary sockets.
//
// Every flow is checked against Config.Allow before anything else happens.
// A refused TCP flow gets a RST, a refused UDP flow an ICMP port
// unreachable and a refused echo request an ICMP administratively
// prohibited; no host socket is opened for any of them. An allowed TCP flow
// dials the host first and completes the peer's handshake only once the
// dial succeeded, so a peer sees the destination's own refusal as a RST.
//
// The same Stack can also originate connections from its own addresses
// (DialContext, ListenTCP, ListenUDP); clients and tests use that.
//
// gVisor types do not leave this package: callers see net.Conn, netip.Addr
// and netip.AddrPort.
package netstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/appconnector/appconnector/connector/logger"
	"github.com/appconnector/appconnector/connector/netx"
	"github.com/appconnector/appconnector/tun"
)

const nicID tcpip.NICID = 1

// Defaults for the zero values of Config.
const (
	DefaultDialTimeout             = 10 * time.Second
	DefaultMaxInFlightDials        = 1024
	DefaultMaxInFlightDialsPerPeer = 256
	DefaultMaxFlows                = 65536
	DefaultMaxFlowsPerPeer         = 16384
	DefaultUDPIdleTimeout          = 2 * time.Minute
	DefaultDNSIdleTimeout          = 15 * time.Second
	// DefaultForwardTimeWait is the TIME-WAIT of a stack that forwards
	// (Allow set); DefaultTimeWait that of one that only dials. See
	// configure.
	DefaultForwardTimeWait = 50 * time.Millisecond
	DefaultTimeWait        = 10 * time.Second
	// Echo forwarding: see Config.ICMPRate and Config.ICMPIdleTimeout.
	DefaultICMPRate        = 20
	DefaultICMPBurst       = 50
	DefaultICMPIdleTimeout = 30 * time.Second
)

// Proto is a transport protocol of a Flow.
type Proto uint8

// Transport protocols. ICMP stands for ICMPv4 and ICMPv6 alike.
const (
	ICMP Proto = 1
	TCP  Proto = 6
	UDP  Proto = 17
)

func (p Proto) String() string {
	switch p {
	case ICMP:
		return "icmp"
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// Flow is a connection attempt arriving from a peer: Src is the peer-side
// (inner source) address, Dst the destination it asked for. For ICMP (an
// echo request) Src's port is the echo identifier and Dst's port is 0.
type Flow struct {
	Proto Proto
	Src   netip.AddrPort
	Dst   netip.AddrPort
}

func (f Flow) String() string { return fmt.Sprintf("%v %v->%v", f.Proto, f.Src, f.Dst) }

// Config configures a Stack. The zero value is a stack that forwards
// nothing.
type Config struct {
	// Addresses are the stack's own addresses (the tunnel addresses). The
	// host part matters; the prefix length is ignored.
	Addresses []netip.Prefix

	// Allow decides whether a flow may be forwarded to the host. It is
	// called once per new flow (for ICMP, per echo request that opens an
	// echo flow), from the packet path, so it must be fast and must not
	// block. Nil refuses every flow.
	Allow func(Flow) bool

	// PeerOf maps a flow's source address to the peer it came from, for the
	// per-peer limits. Nil uses the source address itself.
	PeerOf func(netip.Addr) string

	// FlowsEnded, if set, is called when the last open flow to an address
	// ends (any protocol), just before FlowsTo reports none. It must not
	// block.
	FlowsEnded func(dst netip.Addr)

	// Dial opens host sockets for forwarded flows. Nil uses a
	// net.Dialer's.
	Dial netx.DialFunc
	// DialTimeout bounds each host dial. Zero means DefaultDialTimeout.
	DialTimeout time.Duration

	// MaxInFlightDials bounds host TCP dials in progress at once, over all
	// peers; MaxInFlightDialsPerPeer bounds them per peer. A SYN beyond
	// either gets a RST. Zero means the Default.
	MaxInFlightDials        int
	MaxInFlightDialsPerPeer int
	// MaxFlows bounds open forwarded flows (TCP, UDP and echo flows
	// together, dials in progress included) over all peers; MaxFlowsPerPeer per peer. A new
	// flow beyond either is refused like a disallowed one. Zero means the
	// Default.
	MaxFlows        int
	MaxFlowsPerPeer int

	// UDPIdleTimeout closes a UDP flow with no traffic in either direction
	// for this long. DNSIdleTimeout does the same for flows to port 53.
	// Zero means the Default.
	UDPIdleTimeout time.Duration
	DNSIdleTimeout time.Duration

	// TimeWait is how long the stack keeps a closed TCP connection's
	// 4-tuple (TIME-WAIT). Zero means DefaultForwardTimeWait for a stack
	// that forwards (Allow set) and DefaultTimeWait for one that only
	// dials (see configure).
	TimeWait time.Duration

	// ICMPRate and ICMPBurst bound the echo requests forwarded per peer:
	// ICMPRate a second on average, in bursts of up to ICMPBurst; beyond
	// that a request is dropped. The administratively prohibited answers
	// to refused echo requests, and the ICMP errors a peer sends the
	// stack (icmperr.go), have buckets of the same size of their own.
	// Zero means the Default.
	ICMPRate  float64
	ICMPBurst int
	// ICMPIdleTimeout closes an echo flow (one host ICMP socket per peer
	// address, echo identifier and destination) with no echo request or
	// reply for this long. Zero means DefaultICMPIdleTimeout.
	ICMPIdleTimeout time.Duration

	// FlowRecords, if set, receives a FlowRecord when a forwarded TCP or
	// UDP flow ends, when one is refused (by Allow or while draining, at a
	// limit, or because its host dial failed), and every
	// FlowRecordInterval for each flow still open. It is called on the
	// packet path and from the flows' goroutines: it must not block.
	FlowRecords func(FlowRecord)
	// FlowRecordInterval is the time between interim records of an open
	// flow. Zero means DefaultFlowRecordInterval.
	FlowRecordInterval time.Duration

	// Logf logs events that are rare or rate-limited. Nil discards.
	Logf logger.Logf
}

// Stats are counters of a Stack's forwarding.
type Stats struct {
	TCPForwarded  uint64 // flows whose host dial succeeded and handshake completed
	TCPDialFailed uint64 // host dials that failed or timed out (peer got RST)
	// DialFailures splits TCPDialFailed by reason, indexed by DialRefused,
	// DialTimeout, DialUnreachable and DialOther.
	DialFailures     [numDialFailures]uint64
	TCPRefused       uint64 // SYNs refused by Allow (peer got RST, no dial)
	TCPLimited       uint64 // SYNs refused by a dial or flow limit (peer got RST, no dial)
	UDPForwarded     uint64 // UDP flows opened
	UDPRefused       uint64 // UDP flows refused by Allow (peer got ICMP, no socket)
	UDPLimited       uint64 // UDP flows refused by a flow limit
	UDPHostRefused   uint64 // host reported port unreachable (peer got ICMP)
	UDPIdleClosed    uint64 // UDP flows closed by the idle timer
	OpenFlows        int    // TCP, UDP and echo flows open now, dials in progress included
	OpenTCPFlows     int    // the TCP ones among them
	InFlightDials    int    // host TCP dials in progress now
	PeersWithFlows   int    // peers holding at least one flow or dial
	HandlerFailures  uint64 // flows lost to a stack error after the host dial
	ForwarderDropped uint64 // SYNs dropped by gVisor's own in-flight limit
	TimeWaitRecycled uint64 // connections in TIME-WAIT ended by a new SYN for their 4-tuple
	// TCPTimeouts counts retransmission timeouts of the stack's TCP
	// senders (toward peers and, for a stack that dials, toward its
	// destinations); TCPRetransmits the segments they sent again. A
	// sender that makes progress only by its timer shows here first.
	TCPTimeouts    uint64
	TCPRetransmits uint64
	// TCPRecoveries counts losses the stack's TCP senders found from
	// duplicate ACKs and SACK blocks (fast and SACK recovery), without
	// waiting for the timer. DupAckWindows counts peers' duplicate ACKs
	// delivered with the window of the ACK before them (dupack.go).
	TCPRecoveries uint64
	DupAckWindows uint64
	// (The count of transport endpoints is not here: it costs a walk of
	// all of them under the gVisor stack's lock. See Stack.Endpoints.)

	// OpenICMPFlows are the echo flows among OpenFlows.
	OpenICMPFlows int
	ICMP          ICMPStats
}

// ICMPStats count forwarded echo requests (pings) to addresses other than
// the stack's own (gVisor answers those itself, uncounted).
type ICMPStats struct {
	Flows          uint64 // echo flows opened (one host ICMP socket each)
	Forwarded      uint64 // echo requests sent to the host
	Replies        uint64 // echo replies relayed back to peers
	Refused        uint64 // echo requests refused by Allow
	Limited        uint64 // echo requests refused at a flow limit
	ProhibitedSent uint64 // administratively prohibited answers sent for those two
	// RateLimited counts echo requests dropped, and prohibited answers
	// not sent, at the per-peer rate limits.
	RateLimited   uint64
	HostForbidden uint64 // requests dropped: the host forbids unprivileged ICMP sockets
	HostFailed    uint64 // requests lost: host socket not opened or send failed
	IdleClosed    uint64 // echo flows closed by the idle timer
	Malformed     uint64 // echo requests dropped as malformed or not unicast
	// ErrorsDropped counts ICMP errors from peers kept from the stack,
	// by reason (ICMPErrorOtherPeer and the rest, icmperr.go).
	ErrorsDropped [NumICMPErrorDrops]uint64
}

// Stack is a gVisor network stack attached to a tun.Device.
type Stack struct {
	cfg     Config
	logf    logger.Logf
	flowLog logger.Logf // per-flow events, rate-limited
	dial    netx.DialFunc
	stack   *stack.Stack
	dev     *tun.Device
	local   map[netip.Addr]bool

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc

	limits limiter
	stats  counters
	// draining is set by StopAccepting: no new flow is admitted.
	draining atomic.Bool
	openTCP  atomic.Int64 // TCP flows from admission to their end
	openICMP atomic.Int64 // echo flows open

	echoRates *PeerRates
	// echoForbiddenLogged is set once the host's refusal of ICMP sockets
	// has been logged.
	echoForbiddenLogged atomic.Bool

	mu sync.Mutex // guards the fields after it
	// closed is set by Close; no goroutine starts after it is set.
	closed bool
	// flows are the open forwarded flows, to abort on Close.
	flows map[*flowConn]struct{}
	// echoFlows are the open echo flows, to find a flow's socket.
	echoFlows map[echoKey]*echoFlow
	wg        sync.WaitGroup // every goroutine the Stack started
}

// New creates a stack on dev with cfg. The caller keeps ownership of dev
// and closes it after the Stack.
func New(dev *tun.Device, cfg Config) (*Stack, error) {
	if dev == nil {
		return nil, errors.New("netstack: nil device")
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	s := &Stack{
		cfg:     cfg,
		logf:    cfg.Logf,
		flowLog: logger.RateLimit(cfg.Logf, 10, 20),
		dial:    cfg.Dial,
		dev:     dev,
		local:   make(map[netip.Addr]bool),
		flows:   make(map[*flowConn]struct{}),

		echoFlows: make(map[echoKey]*echoFlow),
	}
	s.limits.init(&cfg)
	s.echoRates = NewPeerRates(numBuckets, cfg.ICMPRate, cfg.ICMPBurst)
	s.ctx, s.cancel = context.WithCancel(context.Background())

	s.stack = stack.New(stack.Options{
		NetworkProtocols: []stack.NetworkProtocolFactory{
			// Loopback destinations are allowed through: whether a flow
			// to 127.0.0.0/8 or ::1 may be forwarded is Allow's decision.
			ipv4.NewProtocolWithOptions(ipv4.Options{AllowExternalLoopbackTraffic: true}),
			ipv6.NewProtocolWithOptions(ipv6.Options{AllowExternalLoopbackTraffic: true}),
		},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
		HandleLocal:        false,
	})
	if err := s.configure(); err != nil {
		s.stack.Destroy()
		s.cancel()
		return nil, err
	}
	if cfg.FlowRecords != nil {
		s.mu.Lock()
		s.goLocked(s.recordInterims)
		s.mu.Unlock()
	}
	return s, nil
}

func (cfg *Config) setDefaults() error {
	if cfg.Logf == nil {
		cfg.Logf = logger.Discard
	}
	if cfg.Dial == nil {
		cfg.Dial = (&net.Dialer{}).DialContext
	}
	switch {
	case cfg.FlowRecordInterval < 0:
		return fmt.Errorf("netstack: FlowRecordInterval %v is negative", cfg.FlowRecordInterval)
	case cfg.FlowRecordInterval == 0:
		cfg.FlowRecordInterval = DefaultFlowRecordInterval
	}
	setDefault := func(p *int, d int, name string) error {
		if *p < 0 {
			return fmt.Errorf("netstack: %s %d is negative", name, *p)
		}
		if *p == 0 {
			*p = d
		}
		return nil
	}
	for _, f := range []struct {
		p    *int
		d    int
		name string
	}{
		{&cfg.MaxInFlightDials, DefaultMaxInFlightDials, "MaxInFlightDials"},
		{&cfg.MaxInFlightDialsPerPeer, DefaultMaxInFlightDialsPerPeer, "MaxInFlightDialsPerPeer"},
		{&cfg.MaxFlows, DefaultMaxFlows, "MaxFlows"},
		{&cfg.MaxFlowsPerPeer, DefaultMaxFlowsPerPeer, "MaxFlowsPerPeer"},
		{&cfg.ICMPBurst, DefaultICMPBurst, "ICMPBurst"},
	} {
		if err := setDefault(f.p, f.d, f.name); err != nil {
			return err
		}
	}
	for _, f := range []struct {
		p    *time.Duration
		d    time.Duration
		name string
	}{
		{&cfg.DialTimeout, DefaultDialTimeout, "DialTimeout"},
		{&cfg.UDPIdleTimeout, DefaultUDPIdleTimeout, "UDPIdleTimeout"},
		{&cfg.DNSIdleTimeout, DefaultDNSIdleTimeout, "DNSIdleTimeout"},
		{&cfg.ICMPIdleTimeout, DefaultICMPIdleTimeout, "ICMPIdleTimeout"},
		{&cfg.TimeWait, map[bool]time.Duration{true: DefaultForwardTimeWait, false: DefaultTimeWait}[cfg.Allow != nil], "TimeWait"},
	} {
		if *f.p < 0 {
			return fmt.Errorf("netstack: %s %v is negative", f.name, *f.p)
		}
		if *f.p == 0 {
			*f.p = f.d
		}
	}
	switch {
	case cfg.ICMPRate < 0 || cfg.ICMPRate != cfg.ICMPRate:
		return fmt.Errorf("netstack: ICMPRate %v is not a rate", cfg.ICMPRate)
	case cfg.ICMPRate == 0:
		cfg.ICMPRate = DefaultICMPRate
	}
	return nil
}

// tcpMinRTO is the floor of the stack's TCP retransmission timeout. The
// RTO itself is still srtt + 4·rttvar: the floor only matters where that
// is smaller, on paths with a round trip of a few milliseconds, which is
// what a tunnel to a nearby peer is. There a lost tail (the last segments
// of a flight, with nothing after them to trigger SACK recovery) can only
// be found by the timer, and at gVisor's default floor of 200 ms each
// such loss cost as much time as moving several megabytes. 50 ms stays
// above the 40 ms a Linux receiver may hold back an ACK of a lone
// segment, so a delayed ACK does not look like a loss.
const tcpMinRTO = 50 * time.Millisecond

func (s *Stack) configure() error {
	sack := tcpip.TCPSACKEnabled(true)
	if err := s.stack.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); err != nil {
		return fmt.Errorf("netstack: enable sack: %v", err)
	}
	// Loss recovery is SACK-based (RFC 6675) without RACK. With RACK, at
	// the pinned gVisor, a sender that lost the tail of a flight stops:
	// the pipe estimate counts every segment above the highest SACK block
	// as in flight, since it ignores RACK's loss marks, so once that
	// exceeds cwnd no retransmission is allowed; after the retransmission
	// timeout RACK enters recovery again with the SACK scoreboard cleared,
	// cwnd near ssthresh+3 and the pipe larger than ever, and its
	// retransmission loop stops at the send queue's front. From then on
	// only the timer moves data: two segments per 200 ms, for the rest of
	// the flow. A stock Linux client on a kernel TUN hit this in about one
	// download in three (connector/kerneltest measures it).
	rec := tcpip.TCPRecovery(0)
	if err := s.stack.SetTransportProtocolOption(tcp.ProtocolNumber, &rec); err != nil {
		return fmt.Errorf("netstack: tcp loss recovery: %v", err)
	}
	minRTO := tcpip.TCPMinRTOOption(tcpMinRTO)
	if err := s.stack.SetTransportProtocolOption(tcp.ProtocolNumber, &minRTO); err != nil {
		return fmt.Errorf("netstack: tcp min rto: %v", err)
	}
	// TIME-WAIT. On a forwarding stack, a new SYN for a 4-tuple still in
	// TIME-WAIT ends it (twRecycler), and otherwise TIME-WAIT only holds
	// an endpoint: inside the tunnel there is one path and no delayed
	// duplicates worth the wait (a peer that missed the last ACK gets a
	// RST and closes anyway), so it is kept very short there. A stack
	// that dials keeps a real TIME-WAIT: the port it would reuse too
	// early may still be closing at the far end, which answers a new SYN
	// with a reset.
	tw := tcpip.TCPTimeWaitTimeoutOption(s.cfg.TimeWait)
	if err := s.stack.SetTransportProtocolOption(tcp.ProtocolNumber, &tw); err != nil {
		return fmt.Errorf("netstack: time-wait timeout: %v", err)
	}
	if err := s.stack.CreateNIC(nicID, newTWRecycler(s.dev.LinkEndpoint(), s)); err != nil {
		return fmt.Errorf("netstack: create nic: %v", err)
	}
	// Promiscuous: accept packets for any destination, not only ours.
	// Spoofing: answer from that destination's address.
	if err := s.stack.SetPromiscuousMode(nicID, true); err != nil {
		return fmt.Errorf("netstack: promiscuous mode: %v", err)
	}
	if err := s.stack.SetSpoofing(nicID, true); err != nil {
		return fmt.Errorf("netstack: spoofing: %v", err)
	}
	for _, p := range s.cfg.Addresses {
		a := p.Addr().Unmap()
		if !a.IsValid() || a.Zone() != "" {
			return fmt.Errorf("netstack: invalid address %v", p)
		}
		proto := header.IPv4ProtocolNumber
		if a.Is6() {
			proto = header.IPv6ProtocolNumber
		}
		pa := tcpip.ProtocolAddress{
			Protocol:          proto,
			AddressWithPrefix: tcpip.AddrFromSlice(a.AsSlice()).WithPrefix(),
		}
		if err := s.stack.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			return fmt.Errorf("netstack: add address %v: %v", a, err)
		}
		s.local[a] = true
	}
	s.stack.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: nicID},
		{Destination: header.IPv6EmptySubnet, NIC: nicID},
	})
	// gVisor's own in-flight limit only bounds handler goroutines; ours
	// (with RSTs) is checked first, so give gVisor's some headroom.
	tcpFwd := tcp.NewForwarder(s.stack, 0, 2*s.cfg.MaxInFlightDials, s.forwardTCP)
	s.stack.SetTransportProtocolHandler(tcp.ProtocolNumber, func(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
		return s.handleTCP(tcpFwd, id, pkt)
	})
	s.stack.SetTransportProtocolHandler(udp.ProtocolNumber, s.handleUDP)
	s.stack.SetTransportProtocolHandler(icmp.ProtocolNumber4, s.handleICMP)
	s.stack.SetTransportProtocolHandler(icmp.ProtocolNumber6, s.handleICMP)
	return nil
}

// Close aborts every forwarded flow and dial, stops the stack and waits for
// every goroutine it started. It does not close the tun.Device. Close is
// idempotent; after it, Dial and Listen calls fail.
func (s *Stack) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	flows := make([]*flowConn, 0, len(s.flows))
	for f := range s.flows {
		flows = append(flows, f)
	}
	s.mu.Unlock()

	s.cancel()
	for _, f := range flows {
		if f.acct != nil {
			f.acct.setEnd(EndShutdown)
		}
		f.abort()
	}
	// Closing the gVisor stack aborts every endpoint, including
	// handshakes forwardTCP may be waiting on, so wait after it.
	s.stack.Close()
	s.wg.Wait()
	s.stack.Wait()
	return nil
}

// goLocked starts fn in a goroutine owned by the Stack, unless the Stack is
// closed. s.mu must be held.
func (s *Stack) goLocked(fn func()) bool {
	if s.closed {
		return false
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		fn()
	}()
	return true
}

// StopAccepting makes the stack refuse every new flow (TCP with a RST,
// UDP with ICMP port unreachable, echo requests with ICMP administratively
// prohibited) while the open ones go on: the first
// step of a graceful shutdown. Listeners on the stack's own addresses are
// not affected.
func (s *Stack) StopAccepting() { s.draining.Store(true) }

// Stats returns a snapshot of the forwarding counters. It reads counters
// only, takes no lock the packet path needs, and is cheap to poll.
func (s *Stack) Stats() Stats {
	st := s.stats.snapshot()
	st.OpenFlows, st.InFlightDials, st.PeersWithFlows = s.limits.usage()
	st.OpenTCPFlows = int(s.openTCP.Load())
	st.OpenICMPFlows = int(s.openICMP.Load())
	tcpStats := s.stack.Stats().TCP
	st.ForwarderDropped = tcpStats.ForwardMaxInFlightDrop.Value()
	st.TCPTimeouts = tcpStats.Timeouts.Value()
	st.TCPRetransmits = tcpStats.Retransmits.Value()
	st.TCPRecoveries = tcpStats.FastRecovery.Value() + tcpStats.SACKRecovery.Value()
	return st
}

// Endpoints returns how many transport endpoints the stack has now,
// including connections still closing (TIME-WAIT and the like) after their
// flow ended, and listeners.
//
// It is for tests and diagnostics, not for polling: gVisor counts them by
// walking every endpoint while holding its stack-wide lock exclusively,
// and every segment the stack sends waits for that lock. With 10,000
// connections one call holds it for ~20 ms (~140 ms under the race
// detector).
func (s *Stack) Endpoints() int { return len(s.stack.RegisteredEndpoints()) }

// TCPStates counts the stack's TCP endpoints by state ("ESTABLISHED",
// "TIME-WAIT", ...). Like Endpoints it walks every endpoint under gVisor's
// stack-wide lock: for tests and diagnostics, not for polling.
func (s *Stack) TCPStates() map[string]int {
	m := map[string]int{}
	for _, e := range s.stack.RegisteredEndpoints() {
		if te, ok := e.(*tcp.Endpoint); ok {
			m[te.EndpointState().String()]++
		}
	}
	return m
}

// FlowsTo returns how many forwarded flows to dst are open (or dialing).
func (s *Stack) FlowsTo(dst netip.Addr) int { return s.limits.flowsTo(dst) }

// WriteRawPacket sends one complete IPv4 or IPv6 packet out of the stack
// towards WireGuard, as if the stack had built it. Tests use it to send
// packets a well-behaved stack would not.
func (s *Stack) WriteRawPacket(pkt []byte) error {
	if len(pkt) == 0 {
		return errors.New("netstack: empty packet")
	}
	var proto tcpip.NetworkProtocolNumber
	switch pkt[0] >> 4 {
	case 4:
		proto = header.IPv4ProtocolNumber
	case 6:
		proto = header.IPv6ProtocolNumber
	default:
		return fmt.Errorf("netstack: raw packet: ip version %d", pkt[0]>>4)
	}
	if err := s.stack.WriteRawPacket(nicID, proto, buffer.MakeWithData(pkt)); err != nil {
		return fmt.Errorf("netstack: raw packet: %v", err)
	}
	return nil
}

// isLocal reports whether a is one of the stack's own addresses.
func (s *Stack) isLocal(a netip.Addr) bool { return s.local[a] }

func addrFrom(a tcpip.Address) netip.Addr {
	ip, _ := netip.AddrFromSlice(a.AsSlice())
	return ip
}

func fullAddr(ap netip.AddrPort) (tcpip.FullAddress, tcpip.NetworkProtocolNumber) {
	a := ap.Addr().Unmap()
	proto := header.IPv4ProtocolNumber
	if a.Is6() {
		proto = header.IPv6ProtocolNumber
	}
	return tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFromSlice(a.AsSlice()), Port: ap.Port()}, proto
}

// flowOf returns the Flow of a transport endpoint ID: the remote side of
// the ID is the peer, the local side the destination it asked for.
func flowOf(p Proto, id stack.TransportEndpointID) Flow {
	return Flow{
		Proto: p,
		Src:   netip.AddrPortFrom(addrFrom(id.RemoteAddress), id.RemotePort),
		Dst:   netip.AddrPortFrom(addrFrom(id.LocalAddress), id.LocalPort),
	}
}

func (s *Stack) peerOf(a netip.Addr) string {
	if s.cfg.PeerOf != nil {
		return s.cfg.PeerOf(a)
	}
	return a.String()
}

// allow applies the policy. Some destinations are refused whatever the
// policy says: the stack's own addresses (a flow to them is for a local
// listener or for nobody), and addresses a host dial would not reach as
// such (unspecified means the local host; an IPv4-mapped IPv6 address
// means the IPv4 host) or that are not unicast.
func (s *Stack) allow(f Flow) bool {
	d := f.Dst.Addr()
	switch {
	case s.draining.Load():
		s.flowLog("%v: refused: draining", f)
		if f.Proto != ICMP {
			s.refused(f, EndPolicy, "draining")
		}
		return false
	case s.isLocal(d), d.IsUnspecified(), d.Is4In6(), d.IsMulticast(), d == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
	case s.cfg.Allow != nil && s.cfg.Allow(f):
		return true
	}
	s.flowLog("%v: refused by policy", f)
	if f.Proto != ICMP {
		s.refused(f, EndPolicy, "")
	}
	return false
}
