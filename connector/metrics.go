package connector

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/appconnector/appconnector/connector/upstream"
	"github.com/appconnector/appconnector/connector/wireguard"
	"github.com/appconnector/appconnector/netstack"
)

// metrics exports a Connector's counters in the Prometheus format. Nothing
// is counted twice: every value is read from the counters the data path
// keeps anyway (Stats, the route table, WireGuard's device state) when
// the metrics are scraped, so the hot paths carry no metrics code.
type metrics struct {
	c *Connector

	peers, peerHandshake, peerRx, peerTx          *prometheus.Desc
	tunPackets, tunBytes, tunDropped, tunBlocked  *prometheus.Desc
	flowsOpen, flows, flowsRefused, dialsInFlight *prometheus.Desc
	dialsFailed, udpHostRefused, handlerFailures  *prometheus.Desc
	dnsQueries, dnsTCPConns, dnsTCPRefused        *prometheus.Desc
	apiConns, apiWatches, apiRefused              *prometheus.Desc
	routes, unsafeRefused, evictions, expired     *prometheus.Desc
	capRefused, chainRefused, stateWrites         *prometheus.Desc
	hostAddrRefused                               *prometheus.Desc
	tcpTimeouts, tcpRetransmits, draining         *prometheus.Desc
	tcpRecoveries, dupAckWindows                  *prometheus.Desc
	icmpRequests, icmpReplies, icmpProhibited     *prometheus.Desc
	icmpErrorsDropped                             *prometheus.Desc
	upQueries, upFailures, upLatency, upLastOK    *prometheus.Desc
	dnsHealthy, flowLogLines                      *prometheus.Desc
}

func newMetrics(c *Connector) *metrics {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("appconnector_"+name, help, labels, nil)
	}
	return &metrics{
		c:               c,
		peers:           d("wireguard_peers", "Configured WireGuard peers."),
		peerHandshake:   d("wireguard_peer_last_handshake_timestamp_seconds", "Unix time of the peer's last completed handshake; 0 if none.", "peer"),
		peerRx:          d("wireguard_peer_receive_bytes_total", "Bytes received from the peer over WireGuard.", "peer"),
		peerTx:          d("wireguard_peer_transmit_bytes_total", "Bytes sent to the peer over WireGuard.", "peer"),
		tunPackets:      d("tunnel_packets_total", "IP packets between WireGuard and the userspace stack; in is from peers.", "direction"),
		tunBytes:        d("tunnel_bytes_total", "IP-level bytes of tunnel_packets_total.", "direction"),
		tunDropped:      d("tunnel_dropped_packets_total", "Packets dropped between WireGuard and the stack (malformed, oversized, or at close).", "direction"),
		tunBlocked:      d("tunnel_backpressure_waits_total", "Times the stack waited for WireGuard to take packets."),
		flowsOpen:       d("flows_open", "Forwarded flows open now (TCP dials in progress included).", "proto"),
		flows:           d("flows_total", "Forwarded flows opened.", "proto"),
		flowsRefused:    d("flows_refused_total", "Flows refused: by the policy (or while draining), or at a flow or dial cap.", "proto", "reason"),
		dialsInFlight:   d("dials_in_flight", "Host TCP dials in progress."),
		dialsFailed:     d("dials_failed_total", "Host TCP dials that failed (the peer got a reset).", "reason"),
		udpHostRefused:  d("udp_host_unreachable_total", "UDP datagrams the host reported unreachable (the peer got ICMP)."),
		handlerFailures: d("flow_setup_failures_total", "Flows lost after the host dial (the peer's handshake failed)."),
		dnsQueries:      d("dns_queries_total", "DNS questions from peers, by result.", "result"),
		dnsTCPConns:     d("dns_tcp_connections", "Open DNS-over-TCP connections from peers."),
		dnsTCPRefused:   d("dns_tcp_connections_refused_total", "DNS-over-TCP connections closed at a cap."),
		apiConns:        d("route_api_connections", "Open connections from peers to the route API."),
		apiWatches:      d("route_api_watch_streams", "Open route API watch streams."),
		apiRefused:      d("route_api_refused_total", "Route API connections closed at a cap (reason connections) and watch requests answered 429 (reason watches).", "reason"),
		routes:          d("routes", "Routes by app, source (configured, learned) and state (advertised, pending, coalesced).", "app", "source", "state"),
		unsafeRefused:   d("dns_unsafe_answers_refused_total", "Answer addresses not learned because they are unsafe (loopback, private, ...)."),
		evictions:       d("route_evictions_total", "Learned routes evicted at a cap."),
		expired:         d("routes_expired_total", "Learned routes expired."),
		capRefused:      d("routes_cap_refused_total", "Answers not learned: at the cap with every route in use."),
		hostAddrRefused: d("host_address_refused_total", "Flows refused because their destination is an address the host has now (added after start) that no route names exactly."),
		chainRefused:    d("dns_chain_refused_total", "Answers whose CNAME chain was a loop, too long or ambiguous (no routes learned), or reached a name of an app the asking peer may not use (REFUSED)."),
		stateWrites:     d("state_writes_total", "Writes of the state directory's files (learned routes, peer endpoints).", "result"),
		tcpTimeouts:     d("tcp_retransmission_timeouts_total", "Retransmission timeouts of the userspace stack's TCP senders: losses found only by the timer."),
		tcpRetransmits:  d("tcp_retransmitted_segments_total", "TCP segments the userspace stack sent again."),
		tcpRecoveries:   d("tcp_loss_recoveries_total", "Losses the userspace stack's TCP senders found from duplicate ACKs and SACK blocks, without the timer."),
		dupAckWindows:   d("tcp_dupack_windows_held_total", "Peers' duplicate ACKs delivered to the userspace stack with the previous ACK's window, so that they count as duplicates."),
		draining:        d("draining", "1 while shutting down (new flows refused)."),
		icmpRequests:    d("icmp_echo_requests_total", "Echo requests from peers to addresses other than the connector's own, by result (refused ones are in flows_refused_total).", "result"),
		icmpReplies:     d("icmp_echo_replies_total", "Echo replies from the host relayed back to peers."),
		icmpProhibited:  d("icmp_prohibited_total", "ICMP administratively prohibited answers sent to peers for refused echo requests."),
		upQueries:       d("dns_upstream_queries_total", "Questions sent to each DNS upstream (the connector's health probes included).", "upstream"),
		upFailures:      d("dns_upstream_failures_total", "Questions a DNS upstream did not answer (error, timeout, malformed) or answered SERVFAIL.", "upstream"),
		upLatency:       d("dns_upstream_latency_seconds", "Time a DNS upstream took to answer.", "upstream"),
		upLastOK:        d("dns_upstream_last_answer_timestamp_seconds", "Unix time of a DNS upstream's last answer other than SERVFAIL; 0 if none.", "upstream"),
		flowLogLines:    d("flow_log_lines_total", "Flow log lines written, dropped (the writer fell behind: a slow or stalled disk) or lost to a write error.", "result"),
		dnsHealthy:      d("dns_healthy", "1 while some DNS upstream answered in the last 30 s (or none is configured); 0 makes /healthz 503."),
		icmpErrorsDropped: d("icmp_errors_dropped_total", "ICMP errors from peers kept from the userspace stack, by reason: quoting another peer's flow, "+
			"announcing an MTU below the minimum, over the peer's rate, malformed or fragmented.", "reason"),
	}
}

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.peers, m.peerHandshake, m.peerRx, m.peerTx, m.tunPackets, m.tunBytes,
		m.tunDropped, m.tunBlocked, m.flowsOpen, m.flows, m.flowsRefused, m.dialsInFlight, m.dialsFailed,
		m.udpHostRefused, m.handlerFailures, m.dnsQueries, m.dnsTCPConns, m.dnsTCPRefused, m.apiConns, m.apiWatches, m.apiRefused, m.routes,
		m.unsafeRefused, m.evictions, m.expired, m.capRefused, m.chainRefused, m.hostAddrRefused, m.stateWrites, m.tcpTimeouts, m.tcpRetransmits, m.tcpRecoveries, m.dupAckWindows, m.draining,
		m.icmpRequests, m.icmpReplies, m.icmpProhibited, m.icmpErrorsDropped,
		m.upQueries, m.upFailures, m.upLatency, m.upLastOK, m.dnsHealthy, m.flowLogLines} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	st := m.c.Stats()

	peers := m.c.wireguardPeers()
	gauge(m.peers, float64(len(peers)))
	for _, p := range peers {
		gauge(m.peerHandshake, float64(p.handshakeSec), p.key)
		counter(m.peerRx, p.rx, p.key)
		counter(m.peerTx, p.tx, p.key)
	}

	counter(m.tunPackets, st.Tun.InboundPackets, "in")
	counter(m.tunPackets, st.Tun.OutboundPackets, "out")
	counter(m.tunBytes, st.Tun.InboundBytes, "in")
	counter(m.tunBytes, st.Tun.OutboundBytes, "out")
	counter(m.tunDropped, st.Tun.InboundDropped, "in")
	counter(m.tunDropped, st.Tun.OutboundDropped, "out")
	counter(m.tunBlocked, st.Tun.OutboundBlocked)

	ns := st.Netstack
	gauge(m.flowsOpen, float64(ns.OpenTCPFlows), "tcp")
	gauge(m.flowsOpen, float64(ns.OpenFlows-ns.OpenTCPFlows-ns.OpenICMPFlows), "udp")
	gauge(m.flowsOpen, float64(ns.OpenICMPFlows), "icmp")
	counter(m.flows, ns.TCPForwarded, "tcp")
	counter(m.flows, ns.UDPForwarded, "udp")
	counter(m.flows, ns.ICMP.Flows, "icmp")
	counter(m.flowsRefused, ns.TCPRefused, "tcp", "policy")
	counter(m.flowsRefused, ns.TCPLimited, "tcp", "limit")
	counter(m.flowsRefused, ns.UDPRefused, "udp", "policy")
	counter(m.flowsRefused, ns.UDPLimited, "udp", "limit")
	counter(m.flowsRefused, ns.ICMP.Refused, "icmp", "policy")
	counter(m.flowsRefused, ns.ICMP.Limited, "icmp", "limit")
	counter(m.icmpRequests, ns.ICMP.Forwarded, "forwarded")
	counter(m.icmpRequests, ns.ICMP.RateLimited, "rate_limited")
	counter(m.icmpRequests, ns.ICMP.HostForbidden, "host_forbidden")
	counter(m.icmpRequests, ns.ICMP.HostFailed, "failed")
	counter(m.icmpRequests, ns.ICMP.Malformed, "malformed")
	counter(m.icmpReplies, ns.ICMP.Replies)
	counter(m.icmpProhibited, ns.ICMP.ProhibitedSent)
	for i, n := range ns.ICMP.ErrorsDropped {
		counter(m.icmpErrorsDropped, n, netstack.ICMPErrorDropNames[i])
	}
	gauge(m.dialsInFlight, float64(ns.InFlightDials))
	for i, name := range netstack.DialFailureNames {
		counter(m.dialsFailed, ns.DialFailures[i], name)
	}
	counter(m.udpHostRefused, ns.UDPHostRefused)
	counter(m.handlerFailures, ns.HandlerFailures)
	counter(m.tcpTimeouts, ns.TCPTimeouts)
	counter(m.tcpRetransmits, ns.TCPRetransmits)
	counter(m.tcpRecoveries, ns.TCPRecoveries)
	counter(m.dupAckWindows, ns.DupAckWindows)

	counter(m.dnsQueries, st.DNS.Answered, "answered")
	counter(m.dnsQueries, st.DNS.Forwarded, "forwarded")
	counter(m.dnsQueries, st.DNS.Refused, "refused")
	counter(m.dnsQueries, st.DNS.ServFail, "servfail")
	counter(m.dnsQueries, st.DNS.FormErr, "formerr")
	counter(m.dnsQueries, st.DNS.Limited, "limited")
	counter(m.dnsQueries, st.DNS.Stale, "stale")
	for _, up := range m.c.dns.upstreams {
		st := up.Stats()
		counter(m.upQueries, st.Queries, up.Name)
		counter(m.upFailures, st.Failures, up.Name)
		var total uint64
		buckets := make(map[float64]uint64, len(upstream.LatencyBuckets))
		for i, le := range upstream.LatencyBuckets {
			total += st.Answers[i]
			buckets[le] = total
		}
		total += st.Answers[len(upstream.LatencyBuckets)]
		ch <- prometheus.MustNewConstHistogram(m.upLatency, total, st.Seconds, buckets, up.Name)
		var last float64
		if t := up.LastAnswer(); !t.IsZero() {
			last = float64(t.UnixNano()) / 1e9
		}
		gauge(m.upLastOK, last, up.Name)
	}
	healthy := 1.0
	if m.c.dns.unhealthy() != "" {
		healthy = 0
	}
	gauge(m.dnsHealthy, healthy)
	gauge(m.dnsTCPConns, float64(st.DNS.TCPConns))
	counter(m.dnsTCPRefused, st.DNS.TCPConnsRefused)
	gauge(m.apiConns, float64(st.API.Conns))
	gauge(m.apiWatches, float64(st.API.Watches))
	counter(m.apiRefused, st.API.ConnsRefused, "connections")
	counter(m.apiRefused, st.API.WatchesRefused, "watches")

	for _, rc := range m.c.table.countRoutes() {
		gauge(m.routes, float64(rc.n), rc.app, rc.source, string(rc.state))
	}
	counter(m.unsafeRefused, st.Routes.UnsafeRefused)
	counter(m.evictions, st.Routes.Evicted)
	counter(m.expired, st.Routes.Expired)
	counter(m.capRefused, st.Routes.CapRefused)
	counter(m.chainRefused, st.Routes.ChainRefused)
	counter(m.hostAddrRefused, st.Routes.LocalRefused)
	counter(m.stateWrites, m.c.stateWrites.Load(), "ok")
	counter(m.stateWrites, m.c.stateWriteErrors.Load(), "error")
	if fl := m.c.flowLog; fl != nil {
		fs := fl.Stats()
		counter(m.flowLogLines, fs.Written, "written")
		counter(m.flowLogLines, fs.Dropped, "dropped")
		counter(m.flowLogLines, fs.Errors, "error")
	}
	var draining float64
	if m.c.draining.Load() {
		draining = 1
	}
	gauge(m.draining, draining)
}

// handler serves the metrics, with the Go runtime's (go_*: goroutines,
// GC, heap) and the process's (process_*: CPU, resident memory, open
// descriptors and their limit, start time) that dashboards expect of any
// Go exporter.
func (m *metrics) handler() http.Handler {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}

// peerState is one WireGuard peer as the device reports it.
type peerState struct {
	key          string // base64 public key
	endpoint     string // "ip:port" of its last authenticated packet, or as configured; "" if none
	handshakeSec int64
	rx, tx       uint64
}

// wireguardPeers reads the peers' state from the WireGuard device.
func (c *Connector) wireguardPeers() []peerState {
	ps, _ := c.readPeers()
	return ps
}

// readPeers is wireguardPeers with the device's error, if it could not
// report its state.
func (c *Connector) readPeers() ([]peerState, error) {
	states, err := wireguard.PeerStates(c.wg.Device)
	if err != nil {
		return nil, err
	}
	out := make([]peerState, len(states))
	for i, st := range states {
		out[i] = peerState{key: st.PublicKey.String(), endpoint: st.Endpoint, rx: st.RxBytes, tx: st.TxBytes}
		if !st.LastHandshake.IsZero() {
			out[i].handshakeSec = st.LastHandshake.Unix()
		}
	}
	return out, nil
}
