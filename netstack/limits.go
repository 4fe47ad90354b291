package netstack

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// limiter enforces the global and per-peer caps on dials in progress and
// open flows. A flow holds its flow slot from the moment it is admitted
// (before its dial) until it ends; a TCP flow also holds a dial slot while
// its host dial is in progress.
type limiter struct {
	maxDials, maxPeerDials int
	maxFlows, maxPeerFlows int

	mu           sync.Mutex // guards the fields after it
	dials, flows int
	peers        map[string]*peerUsage
	dests        map[netip.Addr]int // open flows per destination address
	lastEnded    func(netip.Addr)   // Config.FlowsEnded; nil: none
}

type peerUsage struct {
	dials, flows int
}

func (l *limiter) init(cfg *Config) {
	l.maxDials, l.maxPeerDials = cfg.MaxInFlightDials, cfg.MaxInFlightDialsPerPeer
	l.maxFlows, l.maxPeerFlows = cfg.MaxFlows, cfg.MaxFlowsPerPeer
	l.peers = make(map[string]*peerUsage)
	l.dests = make(map[netip.Addr]int)
	l.lastEnded = cfg.FlowsEnded
}

// admit takes a flow slot for peer's flow to dst and, if dial is set, a
// dial slot too. It reports false, taking nothing, if any cap would be
// exceeded.
func (l *limiter) admit(peer string, dst netip.Addr, dial bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := l.peers[peer]
	if p == nil {
		p = &peerUsage{}
	}
	if l.flows >= l.maxFlows || p.flows >= l.maxPeerFlows {
		return false
	}
	if dial && (l.dials >= l.maxDials || p.dials >= l.maxPeerDials) {
		return false
	}
	l.peers[peer] = p
	l.flows++
	p.flows++
	l.dests[dst]++
	if dial {
		l.dials++
		p.dials++
	}
	return true
}

// dialDone releases the dial slot taken by admit(peer, true).
func (l *limiter) dialDone(peer string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dials--
	l.peers[peer].dials--
}

// flowDone releases the flow slot taken by admit. When it is the last
// flow to dst, Config.FlowsEnded hears of it before the count drops, with
// the lock released, so that no one sees the address without flows before
// its end is recorded.
func (l *limiter) flowDone(peer string, dst netip.Addr) {
	l.mu.Lock()
	if l.lastEnded != nil && l.dests[dst] == 1 {
		l.mu.Unlock()
		l.lastEnded(dst)
		l.mu.Lock()
	}
	defer l.mu.Unlock()
	l.flows--
	if l.dests[dst]--; l.dests[dst] == 0 {
		delete(l.dests, dst)
	}
	p := l.peers[peer]
	p.flows--
	if p.flows == 0 && p.dials == 0 {
		delete(l.peers, peer)
	}
}

func (l *limiter) flowsTo(dst netip.Addr) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dests[dst]
}

func (l *limiter) usage() (flows, dials, peers int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.flows, l.dials, len(l.peers)
}

// counters are the monotonic parts of Stats.
type counters struct {
	tcpForwarded, tcpDialFailed, tcpRefused, tcpLimited atomic.Uint64
	udpForwarded, udpRefused, udpLimited                atomic.Uint64
	udpHostRefused, udpIdleClosed, handlerFailures      atomic.Uint64
	timeWaitRecycled, dupAckWindows                     atomic.Uint64
	icmpFlows, icmpForwarded, icmpReplies, icmpRefused  atomic.Uint64
	icmpLimited, icmpRateLimited, icmpHostForbidden     atomic.Uint64
	icmpHostFailed, icmpIdleClosed, icmpMalformed       atomic.Uint64
	icmpErrorsDropped                                   [NumICMPErrorDrops]atomic.Uint64
	icmpProhibitedSent                                  atomic.Uint64
	dialFailed                                          [numDialFailures]atomic.Uint64
}

func (c *counters) snapshot() Stats {
	var dialFailures [numDialFailures]uint64
	for i := range dialFailures {
		dialFailures[i] = c.dialFailed[i].Load()
	}
	return Stats{
		TCPForwarded:     c.tcpForwarded.Load(),
		TCPDialFailed:    c.tcpDialFailed.Load(),
		TCPRefused:       c.tcpRefused.Load(),
		TCPLimited:       c.tcpLimited.Load(),
		UDPForwarded:     c.udpForwarded.Load(),
		UDPRefused:       c.udpRefused.Load(),
		UDPLimited:       c.udpLimited.Load(),
		UDPHostRefused:   c.udpHostRefused.Load(),
		UDPIdleClosed:    c.udpIdleClosed.Load(),
		HandlerFailures:  c.handlerFailures.Load(),
		TimeWaitRecycled: c.timeWaitRecycled.Load(),
		DupAckWindows:    c.dupAckWindows.Load(),
		DialFailures:     dialFailures,
		ICMP: ICMPStats{
			Flows:          c.icmpFlows.Load(),
			Forwarded:      c.icmpForwarded.Load(),
			Replies:        c.icmpReplies.Load(),
			Refused:        c.icmpRefused.Load(),
			Limited:        c.icmpLimited.Load(),
			ProhibitedSent: c.icmpProhibitedSent.Load(),
			RateLimited:    c.icmpRateLimited.Load(),
			HostForbidden:  c.icmpHostForbidden.Load(),
			HostFailed:     c.icmpHostFailed.Load(),
			IdleClosed:     c.icmpIdleClosed.Load(),
			Malformed:      c.icmpMalformed.Load(),
			ErrorsDropped:  loadAll(&c.icmpErrorsDropped),
		},
	}
}

func loadAll(c *[NumICMPErrorDrops]atomic.Uint64) (out [NumICMPErrorDrops]uint64) {
	for i := range c {
		out[i] = c[i].Load()
	}
	return out
}

// Token buckets of the stack's PeerRates, per peer.
const (
	bucketEcho      = iota // echo requests forwarded
	bucketRefused          // prohibited answers to refused echo requests
	bucketICMPError        // ICMP errors from the peer (icmperr.go)
	numBuckets
)

// PeerRates holds token buckets of a few kinds per peer (kind 0 to
// kinds-1), all of one rate and burst. A peer whose buckets are all full
// is as good as absent, so such entries are swept out when the map has
// doubled since the last sweep: the map stays proportional to the peers
// active within about burst/rate. It is safe for concurrent use.
type PeerRates struct {
	limit rate.Limit
	burst int
	kinds int

	mu      sync.Mutex // guards the fields after it
	peers   map[string][]*rate.Limiter
	sweepAt int
}

const minRateSweep = 1024

// NewPeerRates returns buckets of kinds kinds per peer, each refilling
// perSecond tokens a second up to burst.
func NewPeerRates(kinds int, perSecond float64, burst int) *PeerRates {
	return &PeerRates{limit: rate.Limit(perSecond), burst: burst, kinds: kinds,
		peers: make(map[string][]*rate.Limiter), sweepAt: minRateSweep}
}

// Allow takes a token from peer's bucket of this kind, if there is one.
func (r *PeerRates) Allow(peer string, kind int) bool { return r.AllowN(peer, kind, 1) }

// AllowN takes n tokens from peer's bucket of this kind, if it has them.
func (r *PeerRates) AllowN(peer string, kind, n int) bool {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.peers[peer]
	if b == nil {
		if len(r.peers) >= r.sweepAt {
			r.sweepLocked(now)
		}
		b = make([]*rate.Limiter, r.kinds)
		for i := range b {
			b[i] = rate.NewLimiter(r.limit, r.burst)
		}
		r.peers[peer] = b
	}
	return b[kind].AllowN(now, n)
}

func (r *PeerRates) sweepLocked(now time.Time) {
	for peer, b := range r.peers {
		full := true
		for _, l := range b {
			if l.TokensAt(now) < float64(r.burst) {
				full = false
				break
			}
		}
		if full {
			delete(r.peers, peer)
		}
	}
	r.sweepAt = max(minRateSweep, 2*len(r.peers))
}

// size is how many peers have buckets.
func (r *PeerRates) size() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.peers)
}
