package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/apptype"
	"github.com/appconnector/appconnector/connector/client"
	"github.com/appconnector/appconnector/connector/dnszone"
	"github.com/appconnector/appconnector/connector/proxy/socks5"
	"github.com/appconnector/appconnector/connector/wireguard"
)

// The client side, each against the same work done directly on loopback
// in the same run: bulk upload (MB/s) and connection setup (conns/s) to an
// app reached by name, through the Go library and through the SOCKS5
// proxy of the sidecar.
//
//	go test ./bench -run X -bench 'Client' -benchtime 1x -count 5

type clientLab struct {
	sink, echo *net.TCPListener
	dns        *dnszone.Server
	conn       *connector.Connector
	client     *client.Client
	socks      *socks5.Server
	socksAddr  string
	done       sync.WaitGroup
}

func startClientLab(b *testing.B) *clientLab {
	l := &clientLab{}
	var err error
	if l.sink, err = listenTCP(); err != nil {
		b.Fatal(err)
	}
	go serveSink(l.sink)
	if l.echo, err = listenTCP(); err != nil {
		b.Fatal(err)
	}
	go serveEcho1(l.echo)
	if l.dns, err = dnszone.Start("app.bench.example. 60 IN A 127.0.0.1"); err != nil {
		b.Fatal(err)
	}
	policy, err := apptype.ParsePolicy("bench", []byte(`[{"name": "app", "connectors": ["*"], "domains": ["app.bench.example"], "allowPrivate": ["127.0.0.1/32"]}]`))
	if err != nil {
		b.Fatal(err)
	}
	connKey, _ := wireguard.GeneratePrivateKey()
	clientKey, _ := wireguard.GeneratePrivateKey()
	tunnel := netip.MustParsePrefix("10.94.0.1/24")
	l.conn, err = connector.New(connector.Config{
		WireGuard: &wireguard.Config{
			Interface: wireguard.Interface{PrivateKey: connKey, Addresses: []netip.Prefix{tunnel}},
			Peers:     []wireguard.Peer{{PublicKey: clientKey.PublicKey(), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.94.0.2/32")}}},
		},
		ListenAddr: loopback, Policy: policy, DNSUpstreams: []string{l.dns.Addr},
	})
	if err != nil {
		b.Fatal(err)
	}
	l.client, err = client.New(client.Config{
		WireGuard: &wireguard.Config{
			Interface: wireguard.Interface{PrivateKey: clientKey, Addresses: []netip.Prefix{netip.MustParsePrefix("10.94.0.2/32")}, DNS: []netip.Addr{tunnel.Addr()}},
			Peers: []wireguard.Peer{{PublicKey: connKey.PublicKey(), Endpoint: netip.AddrPortFrom(loopback, l.conn.Port()).String(),
				AllowedIPs: []netip.Prefix{netip.PrefixFrom(tunnel.Addr(), 32)}}},
		},
		ListenAddr: loopback, HostDNS: []string{l.dns.Addr},
	})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	l.socksAddr = ln.Addr().String()
	l.socks = &socks5.Server{Dial: l.client.DialContext}
	l.done.Add(1)
	go func() { defer l.done.Done(); l.socks.Serve(ln) }()
	return l
}

func (l *clientLab) close() {
	l.socks.Close()
	l.done.Wait()
	l.client.Close()
	l.conn.Close()
	l.dns.Close()
	l.sink.Close()
	l.echo.Close()
}

func listenTCP() (*net.TCPListener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	return ln.(*net.TCPListener), nil
}

// serveEcho1 answers one byte per connection and closes first (so
// TIME_WAIT stays on the server side).
func serveEcho1(ln *net.TCPListener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			var b [1]byte
			if _, err := io.ReadFull(c, b[:]); err == nil {
				c.Write(b[:])
			}
		}()
	}
}

type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// dialers returns the three ways of reaching an app port by name.
func (l *clientLab) dialers(b *testing.B) map[string]dialFunc {
	var d net.Dialer
	return map[string]dialFunc{
		"direct": func(ctx context.Context, network, addr string) (net.Conn, error) {
			// The same name, resolved by the app DNS server directly.
			host, port, _ := net.SplitHostPort(addr)
			_ = host
			return d.DialContext(ctx, network, net.JoinHostPort("127.0.0.1", port))
		},
		"library": l.client.DialContext,
		"socks5": func(ctx context.Context, network, addr string) (net.Conn, error) {
			return socks5Connect(ctx, l.socksAddr, addr)
		},
	}
}

func BenchmarkClientBulk(b *testing.B) {
	l := startClientLab(b)
	defer l.close()
	dst := fmt.Sprintf("app.bench.example:%d", l.sink.Addr().(*net.TCPAddr).Port)
	for _, name := range []string{"direct", "library", "socks5"} {
		dial := l.dialers(b)[name]
		b.Run(name, func(b *testing.B) {
			runBulk(b, func() (net.Conn, error) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				return dial(ctx, "tcp", dst)
			})
		})
	}
}

func BenchmarkClientConnects(b *testing.B) {
	l := startClientLab(b)
	defer l.close()
	dst := fmt.Sprintf("app.bench.example:%d", l.echo.Addr().(*net.TCPAddr).Port)
	const total, parallel = 2000, 8
	for _, name := range []string{"direct", "library", "socks5"} {
		dial := l.dialers(b)[name]
		b.Run(name, func(b *testing.B) {
			for range b.N {
				var next atomic.Int64
				var failed atomic.Int64
				start := time.Now()
				var wg sync.WaitGroup
				for range parallel {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for next.Add(1) <= total {
							ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
							c, err := dial(ctx, "tcp", dst)
							cancel()
							if err != nil {
								if failed.Add(1) <= 3 {
									b.Logf("dial: %v", err)
								}
								continue
							}
							c.SetDeadline(time.Now().Add(10 * time.Second))
							var one [1]byte
							_, err = c.Write(one[:])
							if err == nil {
								_, err = io.ReadFull(c, one[:])
							}
							if err != nil && failed.Add(1) <= 3 {
								b.Logf("exchange: %v", err)
							}
							c.Close()
						}
					}()
				}
				wg.Wait()
				if n := failed.Load(); n > 0 {
					b.Fatalf("%d of %d connections failed", n, total)
				}
				b.ReportMetric(total/time.Since(start).Seconds(), "conns/s")
			}
		})
	}
}
