package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/apptype"
	"github.com/appconnector/appconnector/connector/client"
	"github.com/appconnector/appconnector/connector/logger"
	"github.com/appconnector/appconnector/connector/proxy/socks5"
	"github.com/appconnector/appconnector/connector/wireguard"
)

// The harness runs the connector and the client sidecar as separate
// processes by running itself in a role. A role prints "READY <address>"
// when it serves, and stops when its standard input closes. The
// connector role answers "flows" on stdin with "flows N", the forwarded
// flows it has open, so the harness can wait for them to drain.

func runRole(role, dir, dnsUpstream string) error {
	// BENCH_CPUPROFILE=prefix writes a CPU profile of each role process
	// to prefix-<role>.pprof, for finding where the time goes.
	if prefix := os.Getenv("BENCH_CPUPROFILE"); prefix != "" {
		f, err := os.Create(prefix + "-" + role + ".pprof")
		if err != nil {
			return err
		}
		pprof.StartCPUProfile(f)
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	switch role {
	case "connector":
		return connectorRole(dir, dnsUpstream, log)
	case "client":
		return clientRole(dir, dnsUpstream, log)
	case "stock":
		return stockRole(dir)
	}
	return fmt.Errorf("unknown role %q", role)
}

func connectorRole(dir, dnsUpstream string, log *slog.Logger) error {
	conf, _, err := wireguard.Load(filepath.Join(dir, "wg.conf"))
	if err != nil {
		return err
	}
	policy, err := apptype.LoadPolicy(filepath.Join(dir, "policy.json"))
	if err != nil {
		return err
	}
	c, err := connector.New(connector.Config{
		WireGuard:    conf,
		ListenAddr:   loopback,
		Policy:       policy,
		DNSUpstreams: []string{dnsUpstream},
		// Every run learns new names; none may be evicted mid-run, and
		// learning is measured as fast as the one client asks, not at the
		// per-peer learning rate.
		MaxRoutes: 10_000_000, MaxRoutesPerApp: 10_000_000,
		LearnRate: 1e9, LearnBurst: 10_000_000,
		Logger: log,
	})
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Printf("READY %d\n", c.Port())
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		switch sc.Text() {
		case "flows":
			fmt.Printf("flows %d\n", c.Stats().Netstack.OpenFlows)
		case "stats":
			st := c.Stats()
			fmt.Fprintf(os.Stderr, "connector stats: %+v\n", st.Netstack)
		}
	}
	return nil
}

func clientRole(dir, dnsUpstream string, log *slog.Logger) error {
	conf, _, err := wireguard.Load(filepath.Join(dir, "client.conf"))
	if err != nil {
		return err
	}
	c, err := client.New(client.Config{WireGuard: conf, ListenAddr: loopback, HostDNS: []string{dnsUpstream}, Logger: log})
	if err != nil {
		return err
	}
	defer c.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	s := &socks5.Server{Dial: c.DialContext, MaxConns: 100_000,
		Logf: logger.Slog(log, slog.LevelWarn)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Serve(ln)
	}()
	fmt.Printf("READY %s\n", ln.Addr())
	io.Copy(io.Discard, os.Stdin)
	s.Close()
	<-done
	return nil
}

// stockRole is the stock scenario's server side: a wireguard-go device on
// wireguard-go's own tun/netstack with the services inside its stack. It
// prints "READY <port> <service>=<port>,..." and answers "held" with
// "held N" and "release" (closing its hold connections) with "released".
func stockRole(dir string) error {
	conf, _, err := wireguard.Load(filepath.Join(dir, "wg.conf"))
	if err != nil {
		return err
	}
	uapi, err := conf.UAPI(context.Background(), nil)
	if err != nil {
		return err
	}
	addr := conf.Interface.Addresses[0].Addr()
	tnet, dev, err := stockDevice(addr, uapi)
	if err != nil {
		return err
	}
	defer dev.Close()
	port, err := wireguard.ListenPort(dev)
	if err != nil {
		return err
	}
	srv, err := serveStock(tnet, addr)
	if err != nil {
		return err
	}
	defer srv.stop()
	var ports []string
	for _, name := range services {
		ports = append(ports, name+"="+srv.port(name))
	}
	fmt.Printf("READY %d %s\n", port, strings.Join(ports, ","))
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		switch sc.Text() {
		case "held":
			fmt.Printf("held %d\n", srv.heldCount())
		case "release":
			srv.releaseHeld()
			fmt.Println("released")
		}
	}
	return nil
}
