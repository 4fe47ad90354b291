package connector_test

import (
	"bufio"
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// scrape GETs path from the admin API as a local client would.
func scrape(t *testing.T, e *env, path string) (int, string) {
	t.Helper()
	req := httptest.NewRequest("GET", path, nil)
	req.Host = "admin"
	rec := httptest.NewRecorder()
	e.conn.AdminHandler().ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

// metricValue finds the sample whose name and labels are exactly series
// (as written in the text format, labels in the order exported).
func metricValue(t *testing.T, body, series string) float64 {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if ok && name == series {
			v, err := strconv.ParseFloat(val, 64)
			if err != nil {
				t.Fatalf("%s: value %q", series, val)
			}
			return v
		}
	}
	t.Fatalf("no sample %s in the metrics", series)
	return 0
}

// TestMetricsAndHealthz: after a forwarded flow, a refused one, an
// answered question and a refused one, /metrics reports each, along with
// the learned route, the WireGuard peer's handshake and the tunnel's
// packets; /healthz says ok until Shutdown starts.
func TestMetricsAndHealthz(t *testing.T) {
	netstacktest.CheckLeaks(t)
	e, _ := dnsEnv(t)
	echo := netstacktest.TCPEcho(t, "127.0.0.1:0")
	if err := dialOK(t, e, echo); err == nil {
		t.Fatal("reachable before any DNS answer")
	}
	if r := query(t, e, "app.example.com.", dns.TypeA, false); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("answer: %v", r)
	}
	if r := query(t, e, "not-an-app.test.", dns.TypeA, false); r.Rcode != dns.RcodeRefused {
		t.Fatalf("non-app name: %v", r)
	}
	c, err := e.client.DialContext(context.Background(), "tcp", echo.String())
	if err != nil {
		t.Fatal(err)
	}
	netstacktest.EchoTCP(t, c, 4096)
	c.Close()

	code, body := scrape(t, e, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	series := 0
	for _, line := range strings.Split(body, "\n") {
		if line != "" && !strings.HasPrefix(line, "#") {
			series++
		}
	}
	t.Logf("/metrics: %d series", series)
	for series, want := range map[string]float64{
		`appconnector_flows_total{proto="tcp"}`:                              1,
		`appconnector_flows_refused_total{proto="tcp",reason="policy"}`:      1,
		`appconnector_dns_queries_total{result="answered"}`:                  1,
		`appconnector_dns_queries_total{result="refused"}`:                   1,
		`appconnector_routes{app="web",source="learned",state="advertised"}`: 1,
		`appconnector_wireguard_peers`:                                       1,
		`appconnector_draining`:                                              0,
	} {
		if got := metricValue(t, body, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	peer := `appconnector_wireguard_peer_last_handshake_timestamp_seconds{peer="` + e.clientKey() + `"}`
	if hs := metricValue(t, body, peer); hs < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("%s = %v, want a handshake within the last minute", peer, hs)
	}
	for _, series := range []string{"appconnector_tcp_retransmission_timeouts_total", "appconnector_tcp_retransmitted_segments_total",
		"appconnector_tcp_loss_recoveries_total", "appconnector_tcp_dupack_windows_held_total"} {
		if v := metricValue(t, body, series); v < 0 {
			t.Errorf("%s = %v", series, v)
		}
	}
	if in := metricValue(t, body, `appconnector_tunnel_packets_total{direction="in"}`); in < 10 {
		t.Errorf("tunnel packets in = %v", in)
	}
	// The Go runtime's and the process's standard series.
	if g := metricValue(t, body, "go_goroutines"); g < 5 {
		t.Errorf("go_goroutines = %v", g)
	}
	if v := metricValue(t, body, "go_gc_duration_seconds_count"); v < 0 {
		t.Errorf("go_gc_duration_seconds_count = %v", v)
	}
	if fds, limit := metricValue(t, body, "process_open_fds"), metricValue(t, body, "process_max_fds"); fds < 3 || limit < fds {
		t.Errorf("process_open_fds = %v, process_max_fds = %v", fds, limit)
	}
	if rss := metricValue(t, body, "process_resident_memory_bytes"); rss < 1<<20 {
		t.Errorf("process_resident_memory_bytes = %v", rss)
	}
	if st := metricValue(t, body, "process_start_time_seconds"); st > float64(time.Now().Unix()+1) || st < float64(time.Now().Add(-time.Hour).Unix()) {
		t.Errorf("process_start_time_seconds = %v, want this test process's start", st)
	}

	if code, body := scrape(t, e, "/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz while serving: %d %q", code, body)
	}
	e.conn.Shutdown(context.Background()) // nothing open: returns at once
	if code, _ := scrape(t, e, "/healthz"); code != http.StatusServiceUnavailable {
		t.Errorf("/healthz after Shutdown: %d, want 503", code)
	}
}
