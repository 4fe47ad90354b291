// Package demo runs the whole app-connector loop on one machine, with no
// configuration and no internet: a connector, an upstream DNS server
// (dnszone) and an HTTP "app" on loopback, and the real client library
// talking WireGuard over UDP on 127.0.0.1. It narrates each step and
// checks it.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/apptype"
	"github.com/appconnector/appconnector/connector/client"
	"github.com/appconnector/appconnector/connector/dnszone"
	"github.com/appconnector/appconnector/connector/wireguard"
)

var (
	connectorV4 = netip.MustParsePrefix("10.123.0.1/24")
	clientV4    = netip.MustParsePrefix("10.123.0.2/32")
	loopback    = netip.MustParseAddr("127.0.0.1")
)

// Run runs the demo, writing the story to w. It returns an error if any
// step does not behave as the connector promises.
func Run(ctx context.Context, w io.Writer, log *slog.Logger) error {
	step := func(n int, format string, args ...any) {
		fmt.Fprintf(w, "\n%d. "+format+"\n", append([]any{n}, args...)...)
	}
	say := func(format string, args ...any) { fmt.Fprintf(w, "   "+format+"\n", args...) }

	// The app: an HTTP server on loopback.
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	appSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from the app at %s (you asked for %s)\n", r.Host, r.URL.Path)
	}), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan struct{})
	go func() {
		defer close(served)
		appSrv.Serve(appLn)
	}()
	defer func() {
		appSrv.Close()
		<-served
	}()
	appPort := appLn.Addr().(*net.TCPAddr).Port

	// Its DNS: www.demo.example is a CNAME of app.demo.example.
	up, err := dnszone.Start(
		"www.demo.example. 60 IN CNAME app.demo.example.",
		"app.demo.example. 60 IN A 127.0.0.1",
		"example.org. 60 IN A 192.0.2.1",
	)
	if err != nil {
		return err
	}
	defer up.Close()

	policy, err := apptype.ParsePolicy("demo-policy.json", []byte(`[{
		"name": "demo", "connectors": ["tag:connector"], "domains": ["demo.example", "*.demo.example"],
		// The demo app lives on loopback, which is never learned unless the app says so.
		"allowPrivate": ["127.0.0.1/32"]
	}]`))
	if err != nil {
		return err
	}
	serverKey, err := wireguard.GeneratePrivateKey()
	if err != nil {
		return err
	}
	clientKey, err := wireguard.GeneratePrivateKey()
	if err != nil {
		return err
	}
	conn, err := connector.New(connector.Config{
		WireGuard: &wireguard.Config{
			Interface: wireguard.Interface{PrivateKey: serverKey, Addresses: []netip.Prefix{connectorV4}},
			Peers:     []wireguard.Peer{{PublicKey: clientKey.PublicKey(), AllowedIPs: []netip.Prefix{clientV4}}},
		},
		ListenAddr:   loopback,
		Policy:       policy,
		DNSUpstreams: []string{up.Addr},
		Logger:       log,
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	// The client sends the whole of 127.0.0.0/8 to the connector (a
	// static route in its peer's AllowedIPs), so that even addresses no
	// app has reach the connector, whose refusals the demo shows.
	cl, err := client.New(client.Config{
		WireGuard: &wireguard.Config{
			Interface: wireguard.Interface{PrivateKey: clientKey, Addresses: []netip.Prefix{clientV4}, DNS: []netip.Addr{connectorV4.Addr()}},
			Peers: []wireguard.Peer{{
				PublicKey:  serverKey.PublicKey(),
				Endpoint:   netip.AddrPortFrom(loopback, conn.Port()).String(),
				AllowedIPs: []netip.Prefix{netip.PrefixFrom(connectorV4.Addr(), 32), netip.MustParsePrefix("127.0.0.0/8")},
			}},
		},
		ListenAddr: loopback,
		HostDNS:    []string{up.Addr},
		Logger:     log,
	})
	if err != nil {
		return err
	}
	defer cl.Close()

	fmt.Fprintf(w, "appconnector demo: everything below runs in this process, on 127.0.0.1 only.\n")
	say("app:        HTTP on 127.0.0.1:%d, named www.demo.example (CNAME app.demo.example) by the DNS server on %s", appPort, up.Addr)
	say("connector:  WireGuard on 127.0.0.1:%d, tunnel address %s, policy: app \"demo\" = demo.example, *.demo.example", conn.Port(), connectorV4.Addr())
	say("client:     the appconnector client library, tunnel address %s; its peer's AllowedIPs send 127.0.0.0/8 to the connector", clientV4.Addr())

	appAddr := netip.AddrPortFrom(loopback, uint16(appPort))
	step(1, "Before any DNS answer, the client connects to %s through the tunnel:", appAddr)
	if err := dialThrough(ctx, cl, appAddr); err == nil {
		return errors.New("step 1: the app was reachable before its name was resolved")
	} else {
		say("refused (%v): no route yet", shortErr(err))
	}

	step(2, "The client resolves www.demo.example; its split DNS asks the connector (%s:53), which serves that name:", connectorV4.Addr())
	before := conn.Advertised(clientKey.PublicKey().String())
	addrs, err := cl.Resolver().LookupNetIP(ctx, "ip4", "www.demo.example")
	if err != nil {
		return fmt.Errorf("step 2: %w", err)
	}
	// The answer has arrived: the route must be in the table already.
	after := conn.Advertised(clientKey.PublicKey().String())
	v0, v1, adv := before.Version, after.Version, after.Routes
	say("answer: %v", addrs)
	if len(addrs) != 1 || addrs[0] != loopback {
		return fmt.Errorf("step 2: unexpected answer %v", addrs)
	}
	if v1 == v0 || len(adv) != 1 || adv[0] != netip.PrefixFrom(loopback, 32) {
		return fmt.Errorf("step 2: route not in the table when the answer arrived (version %d→%d, routes %v)", v0, v1, adv)
	}
	say("the connector followed the CNAME to app.demo.example and learned %v (table version %d → %d)", adv[0], v0, v1)
	say("the route was installed before the answer was sent, so the first connection goes through")

	step(3, "The client fetches http://www.demo.example:%d/ through the tunnel:", appPort)
	forwarded := conn.Stats().Netstack.TCPForwarded
	body, err := fetch(ctx, cl, fmt.Sprintf("http://www.demo.example:%d/hello", appPort))
	if err != nil {
		return fmt.Errorf("step 3: %w", err)
	}
	say("%s", strings.TrimSpace(body))
	if n := conn.Stats().Netstack.TCPForwarded - forwarded; n != 1 {
		return fmt.Errorf("step 3: the connector forwarded %d connections, want 1", n)
	}
	say("the connector forwarded the connection from its host socket")

	step(4, "The client resolves example.org, a name of no app, and asks the connector for it too:")
	hostAddrs, err := cl.Resolver().LookupNetIP(ctx, "ip4", "example.org")
	if err != nil {
		return fmt.Errorf("step 4: %w", err)
	}
	say("the client's resolver answered %v from the host's DNS server, not the connector", hostAddrs)
	rcode, err := queryThrough(ctx, cl, "example.org", "A")
	if err != nil || rcode != "REFUSED" {
		return fmt.Errorf("step 4: %s, %v; want REFUSED", rcode, err)
	}
	say("asked directly, the connector says %s: it is not an open resolver", rcode)

	other := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), uint16(appPort))
	step(5, "The client connects to %s, an address no app routes:", other)
	if err := dialThrough(ctx, cl, other); err == nil {
		return errors.New("step 5: a connection outside every route was forwarded")
	} else {
		say("refused (%v)", shortErr(err))
	}

	step(6, "The connector's route table:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "   PREFIX\tAPP\tDOMAIN\tSOURCE\tSTATE")
	for _, r := range conn.Routes() {
		fmt.Fprintf(tw, "   %s\t%s\t%s\t%s\t%s\n", r.Prefix, r.App, r.Domain, r.Source, r.State)
	}
	tw.Flush()
	st := conn.Stats()
	say("DNS: %d answered, %d refused; flows: %d forwarded, %d refused",
		st.DNS.Answered, st.DNS.Refused, st.Netstack.TCPForwarded, st.Netstack.TCPRefused)
	fmt.Fprintf(w, "\nAll steps behaved as promised.\n")
	return nil
}

func dialThrough(ctx context.Context, cl *client.Client, dst netip.AddrPort) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := cl.DialContext(ctx, "tcp", dst.String())
	if err != nil {
		return err
	}
	c.Close()
	return nil
}

// queryThrough asks the connector a question through the tunnel and
// returns the answer's rcode.
func queryThrough(ctx context.Context, cl *client.Client, name, qtype string) (string, error) {
	c, err := cl.DialContext(ctx, "udp", netip.AddrPortFrom(connectorV4.Addr(), 53).String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	rcode, _, err := dnszone.Query(c, name, qtype)
	return rcode, err
}

// fetch GETs url through the client, which resolves its name.
func fetch(ctx context.Context, cl *client.Client, url string) (string, error) {
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: cl.DialContext}}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), err
}

func shortErr(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		return s[i+2:]
	}
	return s
}
