package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/apptype"
	"github.com/appconnector/appconnector/connector/dnstest"
	"github.com/appconnector/appconnector/connector/dnszone"
	"github.com/appconnector/appconnector/connector/wireguard"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// TestClientSidecar runs `appconnector client` (in process) against a
// real connector and drives it the way applications do: curl through
// SOCKS5 (with the name resolved by the proxy) and through an HTTP proxy
// CONNECT, Go's net/http with Transport.Proxy, and the DNS server. The app
// name exists only in the connector's upstream DNS, and every request
// must show up as a flow the connector forwarded.
func TestClientSidecar(t *testing.T) {
	netstacktest.CheckLeaks(t)

	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "app says hi to %s", r.Host)
	})}
	served := make(chan struct{})
	go func() { defer close(served); app.Serve(appLn) }()
	defer func() { app.Close(); <-served }()
	appPort := appLn.Addr().(*net.TCPAddr).Port

	upstream := dnstest.New(t, "app.example.com. 60 IN A 127.0.0.1")
	hostDNS := dnstest.New(t, "elsewhere.test. 60 IN A 127.0.0.1") // the host's view: no app names

	connKey, _ := wireguard.GeneratePrivateKey()
	clientKey, _ := wireguard.GeneratePrivateKey()
	tunnel := netip.MustParsePrefix("10.89.0.1/24")
	policy, err := apptype.ParsePolicy("p.json", []byte(`[{"name": "app", "connectors": ["*"], "domains": ["app.example.com"], "allowPrivate": ["127.0.0.1/32"]}]`))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := connector.New(connector.Config{
		WireGuard: &wireguard.Config{
			Interface: wireguard.Interface{PrivateKey: connKey, Addresses: []netip.Prefix{tunnel}},
			Peers:     []wireguard.Peer{{PublicKey: clientKey.PublicKey(), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.89.0.2/32")}}},
		},
		ListenAddr: netip.MustParseAddr("127.0.0.1"), Policy: policy, DNSUpstreams: []string{upstream.Addr},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	dir := t.TempDir()
	clientConf := &wireguard.Config{
		// One connector with an IPv4 and an IPv6 DNS address (the
		// second is never asked: the first in its AllowedIPs is).
		Interface: wireguard.Interface{PrivateKey: clientKey, Addresses: []netip.Prefix{netip.MustParsePrefix("10.89.0.2/32")},
			DNS: []netip.Addr{tunnel.Addr(), netip.MustParseAddr("fd89::1")}},
		Peers: []wireguard.Peer{{PublicKey: connKey.PublicKey(), Endpoint: fmt.Sprintf("127.0.0.1:%d", conn.Port()),
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(tunnel.Addr(), 32), netip.MustParsePrefix("fd89::1/128")}}},
	}
	var cb bytes.Buffer
	clientConf.WriteTo(&cb)
	confPath := filepath.Join(dir, "client.conf")
	os.WriteFile(confPath, cb.Bytes(), 0o600)

	socksAddr := netstacktest.ClosedPort(t, "tcp", "127.0.0.1").String()
	httpAddr := netstacktest.ClosedPort(t, "tcp", "127.0.0.1").String()
	dnsAddr := netstacktest.ClosedPort(t, "udp", "127.0.0.1").String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	adminSock := filepath.Join(dir, "admin.sock")
	flowLog := filepath.Join(dir, "flows.log")
	var logs netstacktest.SyncBuffer
	log := slog.New(slog.NewTextHandler(io.MultiWriter(testWriter{t}, &logs), nil))
	go func() {
		done <- serveClient(ctx, clientFlags{config: confPath, listen: "127.0.0.1", socks5: socksAddr, http: httpAddr, dns: dnsAddr,
			acceptRoutes: true, hostDNS: hostDNS.Addr, admin: adminSock, flowLog: flowLog}, nil, log)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("client: %v", err)
		}
	}()
	netstacktest.WaitFor(t, func() bool {
		c, err := net.Dial("tcp", httpAddr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})

	netstacktest.WaitFor(t, func() bool { return strings.Contains(logs.String(), `msg="client up"`) })
	if !strings.Contains(logs.String(), "connectors=1 peers=1") {
		t.Errorf("the client-up line does not count one connector:\n%s", logs.String())
	}

	target := fmt.Sprintf("http://app.example.com:%d/", appPort)
	want := fmt.Sprintf("app says hi to app.example.com:%d", appPort)
	forwarded := func() uint64 { return conn.Stats().Netstack.TCPForwarded }
	// The HTTP proxy keeps upstream connections for absolute-URI
	// requests alive, so such a request may reuse a tunnel flow opened
	// before; every other request opens exactly one.
	var proxyPoolOpen bool
	check := func(name string, body []byte, err error, before uint64) {
		t.Helper()
		if err != nil || string(body) != want {
			t.Errorf("%s: %q, %v; want %q", name, body, err, want)
		}
		n := forwarded() - before
		if n != 1 && !(n == 0 && proxyPoolOpen && strings.Contains(name, "absolute")) {
			t.Errorf("%s: the connector forwarded %d flows for it, want 1", name, n)
		}
	}

	// Go's net/http through each proxy.
	for _, proxy := range []string{"socks5://" + socksAddr, "http://" + httpAddr} {
		before := forwarded()
		pu, _ := url.Parse(proxy)
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(pu)}}
		resp, err := hc.Get(target)
		var body []byte
		if err == nil {
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		hc.CloseIdleConnections()
		kind := "net/http via " + proxy
		if strings.HasPrefix(proxy, "http:") {
			kind += " (absolute URI)"
		}
		check(kind, body, err, before)
		proxyPoolOpen = proxyPoolOpen || strings.HasPrefix(proxy, "http:")
	}

	// curl, as applications in a sidecar pod would run it.
	if curl, err := exec.LookPath("curl"); err != nil {
		t.Log("curl is not installed: skipping the curl checks (.ci/run installs it)")
	} else {
		for _, tc := range []struct {
			name string
			args []string
		}{
			{"curl socks5h", []string{"--socks5-hostname", socksAddr, target}},
			{"curl CONNECT (as for HTTPS_PROXY)", []string{"--proxytunnel", "--proxy", "http://" + httpAddr, target}},
			{"curl absolute URI (as for HTTP_PROXY)", []string{"--proxy", "http://" + httpAddr, target}},
		} {
			before := forwarded()
			cmd := exec.Command(curl, append([]string{"-sS", "--max-time", "10", "--noproxy", ""}, tc.args...)...)
			cmd.Env = []string{"PATH=" + os.Getenv("PATH")} // no proxy variables from the environment
			out, err := cmd.CombinedOutput()
			check(tc.name, out, err, before)
		}
	}

	// The DNS server: app names via the connector, others via the host.
	for name, wantRcode := range map[string]string{"app.example.com": "NOERROR", "elsewhere.test": "NOERROR", "nowhere.test": "NXDOMAIN"} {
		c, err := net.Dial("udp", dnsAddr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		rcode, _, err := dnszone.Query(c, name, "A")
		c.Close()
		if err != nil || rcode != wantRcode {
			t.Errorf("dns %s: %s %v, want %s", name, rcode, err, wantRcode)
		}
	}

	// `appconnector status` reads it all back from the admin socket.
	var out, errOut bytes.Buffer
	if code := run([]string{"status", "--admin", adminSock}, nil, &out, &errOut); code != 0 {
		t.Fatalf("appconnector status: exit %d: %s", code, errOut.String())
	}
	t.Logf("appconnector status:\n%s", out.String())
	for _, want := range []string{connKey.PublicKey().String(), "10.89.0.1", " up ", "domains app.example.com",
		"tunnel noerror", "host noerror", "host nxdomain", "proxy socks5: ", "proxy http: ", "flow log: "} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("appconnector status lacks %q", want)
		}
	}
	if fi, err := os.Stat(adminSock); err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("admin socket: %v, mode %v; want private to its owner", err, fi.Mode())
	}
	// --healthz, the containers' probe: healthy now, unhealthy once the
	// only connector is gone.
	out.Reset()
	if code := run([]string{"status", "--admin", adminSock, "--healthz"}, nil, &out, &errOut); code != 0 || out.String() != "ok: 1 of 1 connectors up\n" {
		t.Errorf("status --healthz: exit %d, %q %q", code, out.String(), errOut.String())
	}
	conn.Close()
	netstacktest.WaitFor(t, func() bool {
		return run([]string{"status", "--admin", adminSock, "--healthz"}, nil, io.Discard, io.Discard) == 1
	})

	// The proxies' flows are in the flow log as they close (the HTTP
	// proxy may still hold a pooled one).
	netstacktest.WaitFor(t, func() bool {
		data, _ := os.ReadFile(flowLog)
		return strings.Count(string(data), `"domain":"app.example.com","via":"connector"`) >= 3
	})
}
