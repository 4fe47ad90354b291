package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"github.com/appconnector/appconnector/connector/client"
	"github.com/appconnector/appconnector/connector/client/clientadmin"
	"github.com/appconnector/appconnector/connector/logger"
	"github.com/appconnector/appconnector/connector/proxy/httpproxy"
	"github.com/appconnector/appconnector/connector/proxy/socks5"
	"github.com/appconnector/appconnector/connector/upstream"
	"github.com/appconnector/appconnector/connector/wireguard"
)

type clientFlags struct {
	config, listen, socks5, http, dns, logLevel string
	socksUser, socksPass                        string
	acceptRoutes                                bool
	hostDNS, uapi, admin, flowLog               string
	flowLogMaxSize                              int64
}

// runClient is `appconnector client`: the sidecar.
func runClient(args []string, stdout, stderr io.Writer) int {
	var f clientFlags
	fs := clientFlagSet(&f, stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "appconnector client: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if f.config == "" {
		fmt.Fprintln(stderr, "appconnector client: --config is required")
		return 2
	}
	if f.socks5 == "" && f.http == "" && f.dns == "" {
		fmt.Fprintln(stderr, "appconnector client: nothing to serve: give --socks5, --http and/or --dns")
		return 2
	}
	f.socksPass = os.Getenv("APPCONNECTOR_SOCKS5_PASSWORD")
	log, err := newLogger(stderr, f.logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "appconnector client: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if err := serveClient(ctx, f, hup, log); err != nil {
		fmt.Fprintf(stderr, "appconnector client: %v\n", err)
		return 1
	}
	return 0
}

// clientFlagSet is the flag set of `appconnector client`, filling f.
func clientFlagSet(f *clientFlags, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("appconnector client", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.config, "config", "", "wg-quick `file`: [Interface] with DNS = the connectors' tunnel addresses, one [Peer] per connector (required)")
	fs.StringVar(&f.listen, "listen", "", "host `address` for the WireGuard sockets (default: all addresses)")
	fs.StringVar(&f.socks5, "socks5", "", "serve SOCKS5 on this loopback `address`, e.g. 127.0.0.1:1080")
	fs.StringVar(&f.http, "http", "", "serve an HTTP proxy (CONNECT and absolute URIs) on this loopback `address`, e.g. 127.0.0.1:8118")
	fs.StringVar(&f.dns, "dns", "", "serve split DNS (UDP and TCP) on this loopback `address`, e.g. 127.0.0.1:5353")
	fs.StringVar(&f.socksUser, "socks5-user", "", "require this SOCKS5 `username` (RFC 1929); the password comes from $APPCONNECTOR_SOCKS5_PASSWORD")
	fs.BoolVar(&f.acceptRoutes, "accept-routes", true, "route app traffic through the connectors; false sends everything directly")
	fs.StringVar(&f.hostDNS, "host-dns", "", "DNS `servers` for names of no app, ip[:port],... (default: /etc/resolv.conf)")
	fs.StringVar(&f.logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	fs.StringVar(&f.flowLog, "flow-log", "", "write a JSON line per flow to this `file` (created 0600): when it is closed, every 5 minutes while open, and failed dials aggregated per second; reopened on SIGHUP")
	fs.Int64Var(&f.flowLogMaxSize, "flow-log-max-size", 0, "rotate the flow log at this many `MiB`, keeping 3 older files; 0: never")
	fs.StringVar(&f.admin, "admin", "", "serve /healthz, /metrics and /v1/status on this `address`: a loopback IP:port or a unix socket path (none by default)")
	fs.StringVar(&f.uapi, "uapi", "", "serve WireGuard's status read-only for `wg show NAME` (one peer per connector): a NAME (socket /var/run/wireguard/NAME.sock) or a socket path")
	return fs
}

// serveClient runs the sidecar until ctx ends. A value on reload reopens
// the flow log.
func serveClient(ctx context.Context, f clientFlags, reload <-chan os.Signal, log *slog.Logger) error {
	cfg, warns, err := wireguard.Load(f.config)
	if err != nil {
		return err
	}
	for _, w := range warns {
		log.Warn(w.String())
	}
	listenAddr, listenPort, err := parseListen(f.listen)
	if err != nil {
		return err
	}
	if listenPort != 0 {
		return fmt.Errorf("--listen %q: give an address only; the client opens one socket per connector on ports the system picks", f.listen)
	}
	hostDNS, err := parseUpstreams("host-dns", f.hostDNS)
	if err != nil {
		return err
	}
	if len(hostDNS) == 0 {
		if hostDNS, err = upstream.SystemResolvers("/etc/resolv.conf"); err != nil {
			log.Warn("no host DNS servers: names of no app will fail; pass --host-dns", "err", err)
		}
	}
	if (f.socksUser == "") != (f.socksPass == "") {
		return errors.New("--socks5-user and $APPCONNECTOR_SOCKS5_PASSWORD go together")
	}
	flows, err := openFlowLog(f.flowLog, f.flowLogMaxSize, log)
	if err != nil {
		return err
	}
	if flows != nil {
		defer flows.Close() // after the client's Close, deferred below
	}
	c, err := client.New(client.Config{
		FlowLog:      flows,
		WireGuard:    cfg,
		ListenAddr:   listenAddr,
		IgnoreRoutes: !f.acceptRoutes,
		HostDNS:      hostDNS,
		Logger:       log,
	})
	if err != nil {
		return err
	}
	defer c.Close()

	var stops []func() error
	defer func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}()
	stopUAPI, err := serveUAPI(c.ServeUAPI, f.uapi, log)
	if err != nil {
		return err
	}
	stops = append(stops, func() error { stopUAPI(); return nil })
	if f.dns != "" {
		pc, err := listenLoopback("udp", f.dns)
		if err != nil {
			return fmt.Errorf("--dns: %w", err)
		}
		ln, err := listenLoopback("tcp", f.dns)
		if err != nil {
			pc.(net.PacketConn).Close()
			return fmt.Errorf("--dns: %w", err)
		}
		srv, err := c.ServeDNS(pc.(net.PacketConn), ln.(net.Listener))
		if err != nil {
			pc.(net.PacketConn).Close()
			ln.(net.Listener).Close()
			return err
		}
		stops = append(stops, srv.Close)
		log.Info("DNS", "addr", f.dns)
	}
	serve := func(flagName, addr string, serveFn func(net.Listener) error, closeFn func() error) error {
		l, err := listenLoopback("tcp", addr)
		if err != nil {
			return fmt.Errorf("--%s: %w", flagName, err)
		}
		ln := l.(net.Listener)
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := serveFn(ln); err != nil {
				log.Error("proxy stopped", "proxy", flagName, "err", err)
			}
		}()
		stops = append(stops, func() error { err := closeFn(); <-done; return err })
		log.Info("proxy", "kind", flagName, "addr", ln.Addr().String())
		return nil
	}
	var socks *socks5.Server
	if f.socks5 != "" {
		socks = &socks5.Server{Dial: c.DialContext, Username: f.socksUser, Password: f.socksPass,
			Logf: logger.Slog(log, slog.LevelInfo)}
		if err := serve("socks5", f.socks5, socks.Serve, socks.Close); err != nil {
			return err
		}
	}
	var httpProxy *httpproxy.Server
	if f.http != "" {
		httpProxy = &httpproxy.Server{Dial: c.DialContext,
			Logf: logger.Slog(log, slog.LevelInfo)}
		if err := serve("http", f.http, httpProxy.Serve, httpProxy.Close); err != nil {
			return err
		}
	}
	// A connector is a peer holding a DNS address; one with an IPv4 and
	// an IPv6 address is still one connector.
	if f.admin != "" {
		var proxies []clientadmin.Proxy
		if socks != nil {
			proxies = append(proxies, clientadmin.Proxy{Name: "socks5", Stats: socks.Stats})
		}
		if httpProxy != nil {
			proxies = append(proxies, clientadmin.Proxy{Name: "http", Stats: httpProxy.Stats})
		}
		stopAdmin, err := serveAdmin(clientadmin.Handler(c, proxies), f.admin, "", log)
		if err != nil {
			return err
		}
		stops = append(stops, func() error { stopAdmin(); return nil })
	}
	log.Info("client up", "connectors", len(c.Health()), "peers", len(cfg.Peers), "routes", fmt.Sprint(c.Routes()), "accept-routes", f.acceptRoutes)
	for {
		select {
		case <-ctx.Done():
			log.Info("shutting down")
			return nil
		case <-reload:
			if flows != nil {
				flows.Reopen()
				log.Info("SIGHUP: reopening the flow log", "file", f.flowLog)
			} else {
				log.Info("SIGHUP: no --flow-log to reopen")
			}
		}
	}
}

// listenLoopback listens on addr, which must be a loopback IP:port: the
// proxies and DNS serve this host's programs only.
func listenLoopback(network, addr string) (any, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().IsLoopback() || ap.Port() == 0 {
		return nil, fmt.Errorf("%q: want a loopback IP:port such as 127.0.0.1:1080", addr)
	}
	if network == "udp" {
		return net.ListenPacket("udp", addr)
	}
	return net.Listen("tcp", addr)
}
