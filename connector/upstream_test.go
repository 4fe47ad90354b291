package connector_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/apptype"
	"github.com/appconnector/appconnector/connector/dnstest"
	"github.com/appconnector/appconnector/connector/dnszone"
	"github.com/appconnector/appconnector/connector/upstream"
	"github.com/appconnector/appconnector/connector/wireguard"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// testCA makes a CA and a server certificate it signs for localhost and
// 127.0.0.1.
func testCA(t *testing.T) (*x509.CertPool, tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "appconnector test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// startDoT serves zone over DNS over TLS on 127.0.0.1.
func startDoT(t *testing.T, zone *dnszone.Server, cert tls.Certificate) (port string, ln *countingListener) {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln = &countingListener{Listener: raw}
	srv := &dns.Server{Net: "tcp-tls", Listener: tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}}), Handler: zone}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { srv.Shutdown(); wg.Wait() })
	_, port, _ = net.SplitHostPort(raw.Addr().String())
	return port, ln
}

// startDoH serves zone over DNS over HTTPS (HTTP/2) on 127.0.0.1, at
// /dns-query, counting connections and the HTTP versions asked with.
func startDoH(t *testing.T, zone *dnszone.Server, cert tls.Certificate) (srv *httptest.Server, conns, http2 *atomic.Int64) {
	t.Helper()
	conns, http2 = new(atomic.Int64), new(atomic.Int64)
	srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/dns-query" || r.Method != "POST" || r.Header.Get("Content-Type") != "application/dns-message" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		if r.ProtoMajor == 2 {
			http2.Add(1)
		}
		b, _ := io.ReadAll(r.Body)
		q := new(dns.Msg)
		if q.Unpack(b) != nil || q.Id != 0 {
			http.Error(w, "bad message", http.StatusBadRequest)
			return
		}
		q.Id = dns.Id()
		a, err := dns.Exchange(q, zone.Addr)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		a.Id = 0
		out, _ := a.Pack()
		w.Header().Set("Content-Type", "application/dns-message")
		w.Write(out)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.EnableHTTP2 = true
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, conns, http2
}

// App names resolved over DNS over TLS and DNS over HTTPS, with a private
// CA, on kept connections; a server the roots do not vouch for is not
// used.
func TestDNSEncryptedUpstreams(t *testing.T) {
	netstacktest.CheckLeaks(t)
	zone := dnstest.New(t,
		"tls.example.com. 60 IN A 203.0.113.1",
		"doh.example.com. 60 IN A 203.0.113.2",
		"svc.example.com. 60 IN HTTPS 1 . alpn=h2 ipv4hint=203.0.113.3",
	)
	roots, cert := testCA(t)
	dotPort, dotConns := startDoT(t, zone, cert)
	doh, dohConns, dohHTTP2 := startDoH(t, zone, cert)
	_, dohPort, _ := net.SplitHostPort(doh.Listener.Addr().String())
	const policy = `[{"name": "web", "connectors": ["*"], "domains": ["*.example.com"]}]`

	for _, tc := range []struct {
		name, upstream string
		conns          func() int64
	}{
		{"tls", "tls://localhost:" + dotPort, dotConns.n.Load},
		{"https", "https://localhost:" + dohPort + "/dns-query", dohConns.Load},
		{"tls by address", "tls://127.0.0.1:" + dotPort, dotConns.n.Load},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := tc.conns()
			e := newEnvWith(t, connector.Config{DNSUpstreams: []string{tc.upstream},
				DNSUpstreamOptions: upstream.Options{RootCAs: roots}}, policy)
			for i := range 5 {
				name := []string{"tls.example.com.", "doh.example.com."}[i%2]
				r := query(t, e, name, dns.TypeA, i%2 == 1)
				if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
					t.Fatalf("%s over %s: %v", name, tc.upstream, r)
				}
			}
			if r := query(t, e, "svc.example.com.", dns.TypeHTTPS, false); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
				t.Fatalf("HTTPS record over %s: %v", tc.upstream, r)
			}
			for _, want := range []string{"203.0.113.1/32", "203.0.113.2/32", "203.0.113.3/32"} {
				if !hasRoute(e.conn.Routes(), want) {
					t.Errorf("%s not learned over %s: %+v", want, tc.upstream, e.conn.Routes())
				}
			}
			if n := tc.conns() - before; n != 1 {
				t.Errorf("%d connections for 6 questions, want 1 kept", n)
			}
		})
	}
	if dohHTTP2.Load() == 0 {
		t.Error("DNS over HTTPS did not use HTTP/2")
	}

	// The system's roots do not know the test CA: no answer is taken from
	// that server.
	e := newEnvWith(t, connector.Config{DNSUpstreams: []string{"tls://localhost:" + dotPort}}, policy)
	r := query(t, e, "tls.example.com.", dns.TypeA, false)
	if ede := edeOf(r); r.Rcode != dns.RcodeServerFailure || ede == nil || ede.InfoCode != dns.ExtendedErrorCodeNetworkError {
		t.Errorf("unverified server: %v", r)
	}
	_, metrics := scrape(t, e, "/metrics")
	label := `{upstream="tls://localhost:` + dotPort + `"}`
	if n := metricValue(t, metrics, "appconnector_dns_upstream_failures_total"+label); n < 1 {
		t.Errorf("failures of the unverified server: %v", n)
	}
	if n := metricValue(t, metrics, "appconnector_dns_upstream_latency_seconds_count"+label); n != 0 {
		t.Errorf("%v answers taken from the unverified server", n)
	}
}

func hasRoute(rs []apptype.Route, prefix string) bool {
	p := netip.MustParsePrefix(prefix)
	for _, r := range rs {
		if r.Prefix == p {
			return true
		}
	}
	return false
}

func TestDNSUpstreamErrors(t *testing.T) {
	netstacktest.CheckLeaks(t)
	key, _ := wireguard.GeneratePrivateKey()
	wg := &wireguard.Config{Interface: wireguard.Interface{PrivateKey: key, Addresses: []netip.Prefix{connV4}}}
	for _, tc := range []struct{ upstream, want string }{
		{"dns.example", "want ip:port, tls://host[:port] or https://host/path"},
		{"udp://203.0.113.1", `scheme "udp"`},
		{"https://dns.example", "needs its path"},
		{"tls://dns.example/x", "has no path"},
		{"tls://dns.example:99999", "bad port"},
		{"https://user@dns.example/dns-query", "no user"},
	} {
		_, err := connector.New(connector.Config{WireGuard: wg, DNSUpstreams: []string{tc.upstream}})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.upstream) {
			t.Errorf("%s: %v, want an error naming it and saying %q", tc.upstream, err, tc.want)
		}
	}
}
