package clientadmin_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/apptype"
	"github.com/appconnector/appconnector/connector/client"
	"github.com/appconnector/appconnector/connector/client/clientadmin"
	"github.com/appconnector/appconnector/connector/dnstest"
	"github.com/appconnector/appconnector/connector/proxy/socks5"
	"github.com/appconnector/appconnector/connector/wireguard"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

var loopback = netip.MustParseAddr("127.0.0.1")

// startConnector runs connector n for the client whose public key is pub.
func startConnector(t *testing.T, n int, pub wireguard.Key, upstream string) (*connector.Connector, wireguard.Peer) {
	t.Helper()
	key, err := wireguard.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	policy, err := apptype.ParsePolicy("policy.json", []byte(`[{"name": "web", "connectors": ["*"],
		"domains": ["app.example.com"], "allowPrivate": ["127.0.0.1/32"]}]`))
	if err != nil {
		t.Fatal(err)
	}
	tunnel := netip.AddrFrom4([4]byte{10, 91, byte(n), 1})
	c, err := connector.New(connector.Config{
		WireGuard: &wireguard.Config{
			Interface: wireguard.Interface{PrivateKey: key, Addresses: []netip.Prefix{netip.PrefixFrom(tunnel, 24)}},
			Peers:     []wireguard.Peer{{PublicKey: pub, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.91.0.2/32")}}},
		},
		ListenAddr: loopback, Policy: policy, DNSUpstreams: []string{upstream},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, wireguard.Peer{PublicKey: key.PublicKey(), Endpoint: netip.AddrPortFrom(loopback, c.Port()).String(),
		AllowedIPs: []netip.Prefix{netip.PrefixFrom(tunnel, 32)}}
}

// scrape GETs path from the admin API.
func scrape(t *testing.T, srv *httptest.Server, path string, header http.Header) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", srv.URL+path, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// samples parses a Prometheus text exposition into series → value.
func samples(t *testing.T, body string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// TestAdmin drives the sidecar's admin API through two connectors, one
// of which stops and then the other.
func TestAdmin(t *testing.T) {
	netstacktest.CheckLeaks(t)
	up := dnstest.New(t, "app.example.com. 60 IN A 127.0.0.1")
	key, err := wireguard.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	c1, p1 := startConnector(t, 1, key.PublicKey(), up.Addr)
	c2, p2 := startConnector(t, 2, key.PublicKey(), up.Addr)
	cl, err := client.New(client.Config{
		WireGuard: &wireguard.Config{
			Interface: wireguard.Interface{PrivateKey: key, Addresses: []netip.Prefix{netip.MustParsePrefix("10.91.0.2/32")},
				DNS: []netip.Addr{p1.AllowedIPs[0].Addr(), p2.AllowedIPs[0].Addr()}},
			Peers: []wireguard.Peer{p1, p2},
		},
		ListenAddr: loopback, HostDNS: []string{up.Addr},
		ProbeInterval: 200 * time.Millisecond, ProbeTimeout: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	socks := &socks5.Server{Dial: cl.DialContext}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); socks.Serve(ln) }()
	defer func() { socks.Close(); <-served }()
	srv := httptest.NewServer(clientadmin.Handler(cl, []clientadmin.Proxy{{Name: "socks5", Stats: socks.Stats}}))
	defer srv.Close()

	// A flow through the client, and a SOCKS5 client that gives up.
	echo := netstacktest.TCPEcho(t, "127.0.0.1:0")
	conn, err := cl.DialContext(context.Background(), "tcp", fmt.Sprintf("app.example.com:%d", echo.Port()))
	if err != nil {
		t.Fatal(err)
	}
	netstacktest.EchoTCP(t, conn, 512)
	conn.Close()
	if sc, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		sc.Write([]byte{4, 1}) // SOCKS4: a malformed request for this proxy
		io.Copy(io.Discard, sc)
		sc.Close()
	}
	netstacktest.WaitFor(t, func() bool {
		st := cl.Status()
		return st.Connectors[0].ProbeRTT.Count > 0 && st.Connectors[1].ProbeRTT.Count > 0 && socks.Stats().Open == 0
	})

	if code, body := scrape(t, srv, "/healthz", nil); code != http.StatusOK || body != "ok: 2 of 2 connectors up\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	code, body := scrape(t, srv, "/metrics", nil)
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	m := samples(t, body)
	t.Logf("/metrics: %d series", len(m))
	for _, p := range []wireguard.Peer{p1, p2} {
		k := p.PublicKey.String()
		for series, ok := range map[string]func(float64) bool{
			`appconnector_client_connector_up{peer="` + k + `",tunnel="` + p.AllowedIPs[0].Addr().String() + `"}`: func(v float64) bool { return v == 1 },
			`appconnector_client_connector_probe_rtt_seconds_count{peer="` + k + `"}`:                             func(v float64) bool { return v > 0 },
			`appconnector_client_connector_probe_rtt_seconds_bucket{peer="` + k + `",le="+Inf"}`:                  func(v float64) bool { return v > 0 },
			`appconnector_client_connector_last_handshake_timestamp_seconds{peer="` + k + `"}`:                    func(v float64) bool { return v > float64(time.Now().Add(-time.Minute).Unix()) },
			`appconnector_client_connector_receive_bytes_total{peer="` + k + `"}`:                                 func(v float64) bool { return v > 0 },
			`appconnector_client_connector_failovers_total{peer="` + k + `"}`:                                     func(v float64) bool { return v == 0 },
		} {
			if v, found := m[series]; !found || !ok(v) {
				t.Errorf("%s = %v (present %v)", series, v, found)
			}
		}
	}
	flows := m[`appconnector_client_connector_flows_total{peer="`+p1.PublicKey.String()+`"}`] + m[`appconnector_client_connector_flows_total{peer="`+p2.PublicKey.String()+`"}`]
	if flows != 1 {
		t.Errorf("flows through the connectors: %v, want 1", flows)
	}
	for series, want := range map[string]float64{
		`appconnector_client_proxy_connections_total{proxy="socks5"}`:              1,
		`appconnector_client_proxy_connections_open{proxy="socks5"}`:               0,
		`appconnector_client_proxy_refused_total{proxy="socks5",reason="request"}`: 1,
		`appconnector_client_proxy_refused_total{proxy="socks5",reason="policy"}`:  0,
		`appconnector_client_proxy_auth_failures_total{proxy="socks5"}`:            0,
	} {
		if v, found := m[series]; !found || v != want {
			t.Errorf("%s = %v (present %v), want %v", series, v, found, want)
		}
	}
	if m[`appconnector_client_dns_questions_total{result="noerror",route="tunnel"}`] < 1 || m[`appconnector_client_route_set_version`] < 1 {
		t.Error("no DNS answer through a connector, or no route set, counted")
	}
	for _, series := range []string{"go_goroutines", "process_open_fds", "process_start_time_seconds"} {
		if m[series] <= 0 {
			t.Errorf("%s = %v", series, m[series])
		}
	}

	code, body = scrape(t, srv, "/v1/status", nil)
	var st clientadmin.Status
	if err := json.Unmarshal([]byte(body), &st); code != http.StatusOK || err != nil {
		t.Fatalf("/v1/status: %d %v\n%s", code, err, body)
	}
	if len(st.Connectors) != 2 || st.Connectors[0].State != client.StateUp || st.Connectors[0].RTT <= 0 ||
		len(st.Proxies) != 1 || st.Proxies[0].Refused["request"] != 1 || !slices.Contains(st.Routes.Domains, "app.example.com") {
		t.Errorf("/v1/status:\n%s", body)
	}

	// Browsers are refused, as on the connector's admin API.
	for _, h := range []http.Header{{"Origin": {"https://evil.example"}}, {"Sec-Fetch-Site": {"cross-site"}}} {
		if code, _ := scrape(t, srv, "/v1/status", h); code != http.StatusForbidden {
			t.Errorf("browser request with %v: %d, want 403", h, code)
		}
	}

	// One connector stops: still healthy, and the status says which.
	c1.Close()
	netstacktest.WaitFor(t, func() bool { return cl.Status().Connectors[0].State == client.StateDown })
	if code, body := scrape(t, srv, "/healthz", nil); code != http.StatusOK || body != "ok: 1 of 2 connectors up\n" {
		t.Errorf("/healthz with one connector down: %d %q", code, body)
	}
	_, body = scrape(t, srv, "/v1/status", nil)
	t.Logf("/v1/status with the first connector stopped:\n%s", body)
	m = samples(t, func() string { _, b := scrape(t, srv, "/metrics", nil); return b }())
	if v := m[`appconnector_client_connector_failovers_total{peer="`+p1.PublicKey.String()+`"}`]; v != 1 {
		t.Errorf("failovers of the stopped connector: %v, want 1", v)
	}
	// Both stopped: 503, with the reason.
	c2.Close()
	netstacktest.WaitFor(t, func() bool { return cl.Status().Connectors[1].State == client.StateDown })
	code, body = scrape(t, srv, "/healthz", nil)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "every connector is down") || !strings.Contains(body, p2.PublicKey.String()) {
		t.Errorf("/healthz with every connector down: %d %q", code, body)
	}
}
