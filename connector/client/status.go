package client

import (
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/appconnector/appconnector/connector/flowlog"
	"github.com/appconnector/appconnector/connector/wireguard"
)

// Status is a snapshot of the client for an operator (the sidecar serves
// it as /v1/status): its connectors, the routes it sends through them,
// and its DNS counters.
type Status struct {
	Connectors []ConnectorStatus `json:"connectors"`
	Routes     RouteStatus       `json:"routes"`
	DNS        []DNSCount        `json:"dns"`
	// FlowLog counts the flow log's lines, if the client has one.
	FlowLog *flowlog.Stats `json:"flow_log,omitempty"`
}

// Connector states, as ConnectorStatus.State reports them.
const (
	StateUp      = "up"       // answering probes
	StateDNSDown = "dns-down" // answering, but its DNS upstreams fail: names are asked elsewhere first
	StateDown    = "down"     // two probes unanswered: its flows were reset, new ones go elsewhere
)

// ConnectorStatus is one connector as the client sees it.
type ConnectorStatus struct {
	PublicKey string     `json:"public_key"` // base64
	Tunnel    netip.Addr `json:"tunnel"`     // its tunnel (DNS) address
	// Endpoint is its UDP address as WireGuard last saw it (or as
	// configured).
	Endpoint string        `json:"endpoint"`
	State    string        `json:"state"`  // StateUp, StateDNSDown or StateDown
	RTT      time.Duration `json:"rtt_ns"` // smoothed probe round trip
	// LastHandshake is the last completed WireGuard handshake; the zero
	// Time if none.
	LastHandshake time.Time `json:"last_handshake,omitzero"`
	RxBytes       uint64    `json:"rx_bytes"` // WireGuard bytes from it
	TxBytes       uint64    `json:"tx_bytes"` // and to it
	FlowsOpen     int       `json:"flows_open"`
	FlowsTotal    uint64    `json:"flows_total"`
	// Failovers counts the times it was found down: each time its open
	// flows were reset and new ones went to another connector.
	Failovers uint64 `json:"failovers"`
	Routes    int    `json:"routes"` // prefixes it routes for this client now
	// RoutesVersion is the version of the connector's last route set.
	RoutesVersion uint64 `json:"routes_version"`
	// ProbeRTT is the distribution of its probes' round trips.
	ProbeRTT Histogram `json:"-"`
}

// RouteStatus is the client's route set: what goes through connectors.
type RouteStatus struct {
	// Version grows by one whenever a connector's routes or domains
	// change.
	Version  uint64         `json:"version"`
	Prefixes []netip.Prefix `json:"prefixes"`
	Domains  []string       `json:"domains"` // the apps' names the connectors answer
}

// DNSCount is how many questions the client answered with one result
// by one route.
type DNSCount struct {
	// Route is "tunnel" (a connector answered), "host" (the host's
	// resolvers did) or "local" (the client answered itself: a malformed
	// question, too many at once, or no server answered).
	Route string `json:"route"`
	// Result is the answer's rcode: "noerror", "nxdomain", "servfail",
	// "refused", "formerr" or "other".
	Result    string `json:"result"`
	Questions uint64 `json:"questions"`
}

// Histogram is a distribution in the form Prometheus exports it.
type Histogram struct {
	Bounds []float64 // upper bounds of the buckets, seconds, ascending
	Counts []uint64  // observations ≤ Bounds[i] (cumulative)
	Count  uint64    // all observations
	Sum    float64   // their sum, seconds
}

// rttBounds are the probe round-trip buckets, seconds.
var rttBounds = []float64{0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1}

// histogram counts observations per bucket; its owner locks it.
type histogram struct {
	counts [12]uint64 // per bucket of rttBounds, and above the last
	sum    time.Duration
}

func (h *histogram) observe(d time.Duration) {
	i, _ := slices.BinarySearch(rttBounds, d.Seconds())
	h.counts[i]++
	h.sum += d
}

func (h *histogram) export() Histogram {
	out := Histogram{Bounds: rttBounds, Counts: make([]uint64, len(rttBounds)), Sum: h.sum.Seconds()}
	for i, n := range h.counts {
		out.Count += n
		if i < len(rttBounds) {
			out.Counts[i] = out.Count
		}
	}
	return out
}

// dnsRoutes and dnsResults name DNSCount's values.
var (
	dnsRoutes  = [...]string{"tunnel", "host", "local"}
	dnsResults = [...]string{"noerror", "nxdomain", "servfail", "refused", "formerr", "other"}
)

const (
	routeTunnel = iota
	routeHost
	routeLocal
)

// dnsCounts counts answered questions by route and result.
type dnsCounts [len(dnsRoutes)][len(dnsResults)]atomic.Uint64

func (dc *dnsCounts) add(route int, rcode int) {
	res := len(dnsResults) - 1
	switch rcode {
	case dns.RcodeSuccess:
		res = 0
	case dns.RcodeNameError:
		res = 1
	case dns.RcodeServerFailure:
		res = 2
	case dns.RcodeRefused:
		res = 3
	case dns.RcodeFormatError:
		res = 4
	}
	dc[route][res].Add(1)
}

// Status returns a snapshot of the client. Exit-only peers are not
// connectors and are left out.
func (c *Client) Status() Status {
	st := Status{Routes: RouteStatus{Version: c.routesVersion.Load(), Prefixes: c.Routes(), Domains: []string{}}}
	if st.Routes.Prefixes == nil {
		st.Routes.Prefixes = []netip.Prefix{}
	}
	for _, l := range c.links {
		if !l.dnsAddr.IsValid() {
			continue
		}
		var wg wireguard.PeerState
		if peers, err := wireguard.PeerStates(l.dev.Device); err == nil && len(peers) == 1 {
			wg = peers[0]
		}
		cs := ConnectorStatus{
			PublicKey: l.peer.PublicKey.String(), Tunnel: l.dnsAddr,
			Endpoint: wg.Endpoint, LastHandshake: wg.LastHandshake, RxBytes: wg.RxBytes, TxBytes: wg.TxBytes,
			FlowsTotal: l.flowsTotal.Load(),
		}
		if cs.Endpoint == "" {
			cs.Endpoint = l.peer.Endpoint
		}
		l.mu.Lock()
		switch {
		case !l.healthy:
			cs.State = StateDown
		case l.dnsDown:
			cs.State = StateDNSDown
		default:
			cs.State = StateUp
		}
		cs.RTT, cs.FlowsOpen, cs.Failovers = l.rtt, len(l.conns), l.failovers
		cs.RoutesVersion, cs.ProbeRTT = l.routesVersion, l.probeRTT.export()
		st.Routes.Domains = append(st.Routes.Domains, l.domainList...)
		l.mu.Unlock()
		cs.Routes = len(l.routes())
		st.Connectors = append(st.Connectors, cs)
	}
	slices.Sort(st.Routes.Domains)
	st.Routes.Domains = slices.Compact(st.Routes.Domains)
	if c.cfg.FlowLog != nil {
		fs := c.cfg.FlowLog.Stats()
		st.FlowLog = &fs
	}
	for r, route := range dnsRoutes {
		for q, result := range dnsResults {
			st.DNS = append(st.DNS, DNSCount{Route: route, Result: result, Questions: c.dnsCounts[r][q].Load()})
		}
	}
	return st
}
