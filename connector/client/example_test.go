package client_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/apptype"
	"github.com/appconnector/appconnector/connector/client"
	"github.com/appconnector/appconnector/connector/dnszone"
	"github.com/appconnector/appconnector/connector/wireguard"
)

// Example dials an app by name through a connector. In production the
// client's configuration comes from a wg-quick file
// (wireguard.Load("client.conf")); here a connector, its upstream DNS and the
// app itself run on loopback so the example is complete.
func Example() {
	lab := startLab()
	defer lab.close()

	c, err := client.New(client.Config{
		WireGuard:  lab.clientConf, // [Interface] DNS = the connector; [Peer] = the connector
		ListenAddr: netip.MustParseAddr("127.0.0.1"),
		HostDNS:    []string{lab.dns.Addr}, // for names of no app
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// Any Go HTTP client can use the tunnel: names are resolved through
	// the connector, which learns the route before it answers.
	hc := &http.Client{Transport: &http.Transport{DialContext: c.DialContext}}
	resp, err := hc.Get(fmt.Sprintf("http://app.example.com:%d/", lab.appPort))
	if err != nil {
		log.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	hc.CloseIdleConnections()
	fmt.Println(resp.Status, string(body))

	addrs, _ := c.Resolver().LookupNetIP(context.Background(), "ip4", "app.example.com")
	fmt.Println("app.example.com is", addrs, "routed:", c.Routes())
	// Output:
	// 200 OK hello from the app
	// app.example.com is [127.0.0.1] routed: [10.91.0.1/32 127.0.0.1/32]
}

// lab is a connector serving app.example.com, its DNS and the app, on
// loopback.
type lab struct {
	dns        *dnszone.Server
	conn       *connector.Connector
	app        *http.Server
	appPort    int
	clientConf *wireguard.Config
}

func startLab() *lab {
	l := &lab{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	l.appPort = ln.Addr().(*net.TCPAddr).Port
	l.app = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from the app")
	})}
	go l.app.Serve(ln)
	if l.dns, err = dnszone.Start("app.example.com. 60 IN A 127.0.0.1"); err != nil {
		log.Fatal(err)
	}
	policy, err := apptype.ParsePolicy("policy.json", []byte(`[{"name": "app", "connectors": ["*"],
		"domains": ["app.example.com"], "allowPrivate": ["127.0.0.1/32"]}]`))
	if err != nil {
		log.Fatal(err)
	}
	connKey, _ := wireguard.GeneratePrivateKey()
	clientKey, _ := wireguard.GeneratePrivateKey()
	tunnel := netip.MustParsePrefix("10.91.0.1/24")
	l.conn, err = connector.New(connector.Config{
		WireGuard: &wireguard.Config{
			Interface: wireguard.Interface{PrivateKey: connKey, Addresses: []netip.Prefix{tunnel}},
			Peers:     []wireguard.Peer{{PublicKey: clientKey.PublicKey(), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.91.0.2/32")}}},
		},
		ListenAddr:   netip.MustParseAddr("127.0.0.1"),
		Policy:       policy,
		DNSUpstreams: []string{l.dns.Addr},
	})
	if err != nil {
		log.Fatal(err)
	}
	l.clientConf = &wireguard.Config{
		Interface: wireguard.Interface{
			PrivateKey: clientKey,
			Addresses:  []netip.Prefix{netip.MustParsePrefix("10.91.0.2/32")},
			DNS:        []netip.Addr{tunnel.Addr()},
		},
		Peers: []wireguard.Peer{{
			PublicKey:  connKey.PublicKey(),
			Endpoint:   netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), l.conn.Port()).String(),
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(tunnel.Addr(), 32)},
		}},
	}
	return l
}

func (l *lab) close() {
	l.conn.Close()
	l.dns.Close()
	l.app.Close()
}
