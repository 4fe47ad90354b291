// Package clientadmin is the client sidecar's admin API, for the operator
// of the pod or host it runs on:
//
//	GET /healthz    200 while some connector is up; 503 with the reason otherwise
//	GET /metrics    Prometheus metrics: per connector, per proxy, DNS, Go and process
//	GET /v1/status  JSON: the connectors, their state and round trip, the route set and its version
//
// It must be served only where the operator alone can reach it (a unix
// socket with mode 0600, or a loopback address); requests from web
// browsers are refused as on the connector's admin API. The client
// library itself does not import it (nor Prometheus): a program that
// embeds the client reads the same figures from (*client.Client).Status.
package clientadmin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/appconnector/appconnector/connector/client"
	"github.com/appconnector/appconnector/connector/netx"
	"github.com/appconnector/appconnector/connector/proxy"
)

// Proxy is a proxy the sidecar serves, for its counters.
type Proxy struct {
	Name  string             // "socks5", "http"
	Stats func() proxy.Stats // its counters
}

// Status is what /v1/status serves: the client's Status and its proxies'
// counters.
type Status struct {
	client.Status
	Proxies []ProxyStatus `json:"proxies"`
}

// ProxyStatus is one proxy's counters.
type ProxyStatus struct {
	Name         string            `json:"name"`
	Conns        uint64            `json:"connections"`
	Open         int               `json:"open"`
	Refused      map[string]uint64 `json:"refused"` // by reason: limit, request, policy, dial
	AuthFailures uint64            `json:"auth_failures"`
}

// Handler returns the admin API of c and its proxies.
func Handler(c *client.Client, proxies []Proxy) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		up, why := healthy(c.Status())
		if !up {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, why)
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(status(c, proxies))
	})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(newMetrics(c, proxies), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return netx.NotForBrowsers(mux)
}

// healthy says whether some connector is up, and why or why not, in one
// line.
func healthy(st client.Status) (bool, string) {
	if len(st.Connectors) == 0 {
		return false, "no connector configured"
	}
	var up int
	var down []string
	for _, cs := range st.Connectors {
		if cs.State == client.StateDown {
			down = append(down, fmt.Sprintf("%s (%v)", cs.PublicKey, cs.Tunnel))
		} else {
			up++
		}
	}
	if up == 0 {
		return false, "every connector is down: " + strings.Join(down, ", ")
	}
	return true, fmt.Sprintf("ok: %d of %d connectors up", up, len(st.Connectors))
}

func status(c *client.Client, proxies []Proxy) Status {
	st := Status{Status: c.Status(), Proxies: []ProxyStatus{}}
	if st.Connectors == nil {
		st.Connectors = []client.ConnectorStatus{}
	}
	// Only the DNS counts that are not zero: a person reads this.
	st.DNS = slices.DeleteFunc(st.DNS, func(d client.DNSCount) bool { return d.Questions == 0 })
	if st.DNS == nil {
		st.DNS = []client.DNSCount{}
	}
	for _, p := range proxies {
		ps := p.Stats()
		out := ProxyStatus{Name: p.Name, Conns: ps.Conns, Open: ps.Open, AuthFailures: ps.AuthFailures, Refused: map[string]uint64{}}
		for i, n := range ps.Refused {
			out.Refused[proxy.RefusalNames[i]] = n
		}
		st.Proxies = append(st.Proxies, out)
	}
	return st
}

// metrics exports the client's figures, read from Status and the proxies
// at each scrape.
type metrics struct {
	c       *client.Client
	proxies []Proxy

	up, dnsHealthy, rtt, handshake, rx, tx            *prometheus.Desc
	flowsOpen, flows, failovers, connRoutes           *prometheus.Desc
	routes, routesVersion                             *prometheus.Desc
	proxyConns, proxyOpen, proxyRefused, proxyAuthBad *prometheus.Desc
	dnsQuestions, flowLogLines                        *prometheus.Desc
}

func newMetrics(c *client.Client, proxies []Proxy) *metrics {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("appconnector_client_"+name, help, labels, nil)
	}
	return &metrics{
		c: c, proxies: proxies,
		up:            d("connector_up", "1 while the connector answers probes (0: its flows were reset, new ones go elsewhere).", "peer", "tunnel"),
		dnsHealthy:    d("connector_dns_healthy", "1 while the connector says its DNS upstreams answer.", "peer"),
		rtt:           d("connector_probe_rtt_seconds", "Round trips of the probes to the connector.", "peer"),
		handshake:     d("connector_last_handshake_timestamp_seconds", "Unix time of the last WireGuard handshake with the connector; 0 if none.", "peer"),
		rx:            d("connector_receive_bytes_total", "WireGuard bytes received from the connector.", "peer"),
		tx:            d("connector_transmit_bytes_total", "WireGuard bytes sent to the connector.", "peer"),
		flowsOpen:     d("connector_flows_open", "Flows open through the connector.", "peer"),
		flows:         d("connector_flows_total", "Flows opened through the connector.", "peer"),
		failovers:     d("connector_failovers_total", "Times the connector was found down and its flows moved elsewhere.", "peer"),
		connRoutes:    d("connector_routes", "Prefixes the connector routes for this client.", "peer"),
		routes:        d("routes", "Prefixes routed through connectors."),
		routesVersion: d("route_set_version", "Grows by one whenever a connector's routes or domains change."),
		proxyConns:    d("proxy_connections_total", "Client connections the proxy accepted.", "proxy"),
		proxyOpen:     d("proxy_connections_open", "Client connections open on the proxy.", "proxy"),
		proxyRefused:  d("proxy_refused_total", "Requests the proxy refused: at its connection limit, malformed, refused by policy, or whose dial failed.", "proxy", "reason"),
		proxyAuthBad:  d("proxy_auth_failures_total", "Failed authentications on the proxy.", "proxy"),
		dnsQuestions:  d("dns_questions_total", "DNS questions answered, by route (tunnel, host, local) and result (the rcode).", "route", "result"),
		flowLogLines:  d("flow_log_lines_total", "Flow log lines written, dropped (the writer fell behind: a slow or stalled disk) or lost to a write error.", "result"),
	}
}

func (m *metrics) descs() []*prometheus.Desc {
	return []*prometheus.Desc{m.up, m.dnsHealthy, m.rtt, m.handshake, m.rx, m.tx, m.flowsOpen, m.flows, m.failovers,
		m.connRoutes, m.routes, m.routesVersion, m.proxyConns, m.proxyOpen, m.proxyRefused, m.proxyAuthBad, m.dnsQuestions, m.flowLogLines}
}

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range m.descs() {
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
	flag := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	st := m.c.Status()
	for _, cs := range st.Connectors {
		k := cs.PublicKey
		gauge(m.up, flag(cs.State != client.StateDown), k, cs.Tunnel.String())
		gauge(m.dnsHealthy, flag(cs.State == client.StateUp), k)
		h := cs.ProbeRTT
		buckets := make(map[float64]uint64, len(h.Bounds))
		for i, b := range h.Bounds {
			buckets[b] = h.Counts[i]
		}
		ch <- prometheus.MustNewConstHistogram(m.rtt, h.Count, h.Sum, buckets, k)
		var hs float64
		if !cs.LastHandshake.IsZero() {
			hs = float64(cs.LastHandshake.UnixNano()) / 1e9
		}
		gauge(m.handshake, hs, k)
		counter(m.rx, cs.RxBytes, k)
		counter(m.tx, cs.TxBytes, k)
		gauge(m.flowsOpen, float64(cs.FlowsOpen), k)
		counter(m.flows, cs.FlowsTotal, k)
		counter(m.failovers, cs.Failovers, k)
		gauge(m.connRoutes, float64(cs.Routes), k)
	}
	gauge(m.routes, float64(len(st.Routes.Prefixes)))
	gauge(m.routesVersion, float64(st.Routes.Version))
	for _, p := range m.proxies {
		ps := p.Stats()
		counter(m.proxyConns, ps.Conns, p.Name)
		gauge(m.proxyOpen, float64(ps.Open), p.Name)
		for i, n := range ps.Refused {
			counter(m.proxyRefused, n, p.Name, proxy.RefusalNames[i])
		}
		counter(m.proxyAuthBad, ps.AuthFailures, p.Name)
	}
	for _, d := range st.DNS {
		counter(m.dnsQuestions, d.Questions, d.Route, d.Result)
	}
	if fl := st.FlowLog; fl != nil {
		counter(m.flowLogLines, fl.Written, "written")
		counter(m.flowLogLines, fl.Dropped, "dropped")
		counter(m.flowLogLines, fl.Errors, "error")
	}
}
