package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/device"
	stocknetstack "golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/appconnector/appconnector/connector/client"
	"github.com/appconnector/appconnector/connector/dnszone"
	"github.com/appconnector/appconnector/connector/wireguard"
)

var loopback = netip.MustParseAddr("127.0.0.1")

// appName is the name the connector scenarios reach the services by; only
// the harness's DNS server knows it, so a flow that did not go through the
// connector's DNS could not even resolve it.
const appName = "svc.bench.example"

// scenario is one way of reaching the services.
type scenario struct {
	name string
	// dial opens a connection to service svc.
	dial func(ctx context.Context, svc string) (net.Conn, error)
	// resolve asks for a name the way an application would (nil: the
	// scenario has no DNS of its own).
	resolve func(ctx context.Context, name string) error
	// procs are the processes whose CPU and memory are measured; the
	// harness itself is always measured.
	procs map[string]int
	// servers are the services' servers (host, in-stack, or in the stock
	// process): the idle workload counts and releases their held flows.
	servers holder
	// openFlows reports the flows the connector still holds (nil: no
	// connector), so workloads can wait for the last one's to drain.
	openFlows func() int
	// debug asks the connector to report its counters on stderr.
	debug func()
	close func()
	// limit marks the crypto bound: no path at all, only the bulk
	// figures, measured by cryptoLimit.
	limit bool
}

// holder is what the idle workload needs of the services' servers.
type holder interface {
	heldCount() int // the hold connections open
	releaseHeld()   // close them from the server side
}

// setup holds what several scenarios share.
type setup struct {
	host     *servers        // the services on host loopback
	dns      *dnszone.Server // the apps' authoritative DNS
	dnsNames []string        // names in it for the DNS workload
	dir      string          // scratch directory for configs
	self     string          // this binary, for the helper processes
}

// directScenario is loopback TCP to the services, and DNS questions
// straight to the authoritative server: the physical reference.
func directScenario(s *setup) (*scenario, error) {
	var d net.Dialer
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return d.DialContext(ctx, network, s.dns.Addr)
	}}
	return &scenario{
		name: "direct",
		dial: func(ctx context.Context, svc string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", joinHostPort("127.0.0.1", s.host.port(svc)))
		},
		resolve: lookupWith(r),
		servers: s.host,
		close:   func() {},
	}, nil
}

// lookupWith is a scenario's resolve: an application's lookup of a name's
// IPv4 addresses through r.
func lookupWith(r *net.Resolver) func(ctx context.Context, name string) error {
	return func(ctx context.Context, name string) error {
		addrs, err := r.LookupNetIP(ctx, "ip4", name)
		if err == nil && len(addrs) == 0 {
			err = errors.New("no address")
		}
		return err
	}
}

// limitScenario is the physical bound of bulk throughput: both ends'
// ChaCha20-Poly1305 work on one core (cryptoLimit).
func limitScenario(*setup) (*scenario, error) {
	return &scenario{name: "limit", limit: true, close: func() {}}, nil
}

// The stock scenarios' addresses inside their tunnels.
var (
	stockServerAddr = netip.MustParseAddr("10.96.0.1")
	stockClientAddr = netip.MustParseAddr("10.96.0.2")
)

// stockScenario is two wireguard-go devices on wireguard-go's own
// tun/netstack, peered over UDP on 127.0.0.1, with the services inside
// the server's stack (nothing forwarded): what users would start from.
// The server side runs in a process of its own (the stock role), as the
// connector does, so the two compare like with like.
func stockScenario(s *setup) (*scenario, error) {
	serverKey, clientKey, err := keyPair()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(s.dir, "stock")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	conf := &wireguard.Config{
		Interface: wireguard.Interface{PrivateKey: serverKey, Addresses: []netip.Prefix{netip.PrefixFrom(stockServerAddr, 24)}},
		Peers:     []wireguard.Peer{{PublicKey: clientKey.PublicKey(), AllowedIPs: []netip.Prefix{netip.PrefixFrom(stockClientAddr, 32)}}},
	}
	if err := writeConf(filepath.Join(dir, "wg.conf"), conf); err != nil {
		return nil, err
	}
	cmd := exec.Command(s.self, "-role", "stock", "-dir", dir)
	line, stdin, lines, err := startRole(cmd)
	if err != nil {
		return nil, fmt.Errorf("stock process: %w", err)
	}
	proc := &stockProc{cmd: cmd, stdin: stdin, lines: lines, ports: map[string]uint16{}}
	var port uint16
	if f := strings.Fields(line); len(f) == 3 {
		p, perr := strconv.ParseUint(f[1], 10, 16)
		port, err = uint16(p), perr
		for _, kv := range strings.Split(f[2], ",") {
			name, v, _ := strings.Cut(kv, "=")
			if p, perr := strconv.ParseUint(v, 10, 16); perr == nil {
				proc.ports[name] = uint16(p)
			}
		}
	}
	if port == 0 || err != nil || len(proc.ports) != len(services) {
		proc.stop()
		return nil, fmt.Errorf("stock process said %q", line)
	}
	cnet, cdev, err := stockDevice(stockClientAddr, fmt.Sprintf("private_key=%s\npublic_key=%s\nendpoint=%s\nallowed_ip=%s/32\n",
		clientKey.Hex(), serverKey.PublicKey().Hex(), netip.AddrPortFrom(loopback, port), stockServerAddr))
	if err != nil {
		proc.stop()
		return nil, fmt.Errorf("stock: %w", err)
	}
	return &scenario{
		name: "stock",
		dial: func(ctx context.Context, svc string) (net.Conn, error) {
			return cnet.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(stockServerAddr, proc.ports[svc]))
		},
		procs:   map[string]int{"stock": cmd.Process.Pid},
		servers: proc,
		close: func() {
			cdev.Close()
			proc.stop()
		},
	}, nil
}

// stockProc is the stock scenario's server side in its own process.
type stockProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines <-chan string
	ports map[string]uint16 // by service
}

func (p *stockProc) stop() { stopRole(p.cmd, p.stdin) }

// heldCount asks the process how many hold connections are open; -1 if
// it does not answer.
func (p *stockProc) heldCount() int {
	n, err := strconv.Atoi(strings.TrimPrefix(p.ask("held"), "held "))
	if err != nil {
		return -1
	}
	return n
}

// releaseHeld has the process close its hold connections.
func (p *stockProc) releaseHeld() { p.ask("release") }

// ask sends a command line and returns the answer line ("" if none comes
// within 5 s).
func (p *stockProc) ask(cmd string) string {
	if _, err := io.WriteString(p.stdin, cmd+"\n"); err != nil {
		return ""
	}
	select {
	case line := <-p.lines:
		return line
	case <-time.After(5 * time.Second):
		return ""
	}
}

// stockInprocScenario is the stock pair with both devices in the harness
// process, sharing it with the harness and the other scenarios' clients:
// the figure earlier reports compared against.
func stockInprocScenario(s *setup) (*scenario, error) {
	snet, cnet, closePair, err := stockPair(stockServerAddr, stockClientAddr)
	if err != nil {
		return nil, fmt.Errorf("stock-inproc: %w", err)
	}
	srv, err := serveStock(snet, stockServerAddr)
	if err != nil {
		closePair()
		return nil, fmt.Errorf("stock-inproc: %w", err)
	}
	return &scenario{
		name: "stock-inproc",
		dial: func(ctx context.Context, svc string) (net.Conn, error) {
			p, _ := strconv.Atoi(srv.port(svc))
			return cnet.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(stockServerAddr, uint16(p)))
		},
		servers: srv,
		close: func() {
			srv.stop()
			closePair()
		},
	}, nil
}

// serveStock serves the services inside a stock stack at addr, on ports
// from 5001 up.
func serveStock(tnet *stocknetstack.Net, addr netip.Addr) (*servers, error) {
	next := uint16(5000)
	return startServers(func() (net.Listener, error) {
		next++
		return tnet.ListenTCPAddrPort(netip.AddrPortFrom(addr, next))
	})
}

// stockDevice starts a wireguard-go device on wireguard-go's own
// tun/netstack at addr, its socket on 127.0.0.1, configured by uapi.
func stockDevice(addr netip.Addr, uapi string) (*stocknetstack.Net, *device.Device, error) {
	tdev, tnet, err := stocknetstack.CreateNetTUN([]netip.Addr{addr}, nil, 1420)
	if err != nil {
		return nil, nil, err
	}
	bind, err := wireguard.NewBind(loopback)
	if err != nil {
		tdev.Close()
		return nil, nil, err
	}
	dev := device.NewDevice(tdev, bind, device.NewLogger(device.LogLevelSilent, ""))
	if err := dev.IpcSet(uapi); err != nil {
		dev.Close()
		return nil, nil, err
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		return nil, nil, err
	}
	return tnet, dev, nil
}

// stockPair peers two stock devices over UDP on 127.0.0.1: the server at
// serverAddr, the client at clientAddr. stop closes both.
func stockPair(serverAddr, clientAddr netip.Addr) (snet, cnet *stocknetstack.Net, stop func(), err error) {
	serverKey, clientKey, err := keyPair()
	if err != nil {
		return nil, nil, nil, err
	}
	snet, sdev, err := stockDevice(serverAddr, fmt.Sprintf("private_key=%s\npublic_key=%s\nallowed_ip=%s/32\n",
		serverKey.Hex(), clientKey.PublicKey().Hex(), clientAddr))
	if err != nil {
		return nil, nil, nil, err
	}
	port, err := wireguard.ListenPort(sdev)
	if err != nil {
		sdev.Close()
		return nil, nil, nil, err
	}
	cnet, cdev, err := stockDevice(clientAddr, fmt.Sprintf("private_key=%s\npublic_key=%s\nendpoint=%s\nallowed_ip=%s/32\n",
		clientKey.Hex(), serverKey.PublicKey().Hex(), netip.AddrPortFrom(loopback, port), serverAddr))
	if err != nil {
		sdev.Close()
		return nil, nil, nil, err
	}
	return snet, cnet, func() { cdev.Close(); sdev.Close() }, nil
}

// connectorProc is a connector running as a separate process.
type connectorProc struct {
	cmd       *exec.Cmd
	stdin     io.WriteCloser
	lines     <-chan string // its stdout after READY
	port      uint16
	tunnel    netip.Addr
	clientKey wireguard.Key
	connKey   wireguard.Key
}

// startConnectorProc runs this binary in the connector role, with a
// policy that serves *.bench.example (including the loopback services).
func startConnectorProc(s *setup, n int) (*connectorProc, error) {
	p := &connectorProc{tunnel: netip.AddrFrom4([4]byte{10, 95, byte(n), 1})}
	p.connKey, _ = wireguard.GeneratePrivateKey()
	p.clientKey, _ = wireguard.GeneratePrivateKey()
	dir := filepath.Join(s.dir, fmt.Sprintf("connector%d", n))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	conf := &wireguard.Config{
		Interface: wireguard.Interface{PrivateKey: p.connKey, Addresses: []netip.Prefix{netip.PrefixFrom(p.tunnel, 24)}},
		Peers: []wireguard.Peer{{PublicKey: p.clientKey.PublicKey(), AllowedIPs: []netip.Prefix{
			netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 95, byte(n), 2}), 32)}}},
	}
	if err := writeConf(filepath.Join(dir, "wg.conf"), conf); err != nil {
		return nil, err
	}
	policy := `[{"name": "bench", "connectors": ["*"], "domains": ["*.bench.example"], "allowPrivate": ["127.0.0.1/32"]}]`
	if err := os.WriteFile(filepath.Join(dir, "policy.json"), []byte(policy), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(s.self, "-role", "connector", "-dir", dir, "-dns-upstream", s.dns.Addr)
	line, stdin, lines, err := startRole(cmd)
	if err != nil {
		return nil, fmt.Errorf("connector process: %w", err)
	}
	port, err := strconv.ParseUint(strings.TrimPrefix(line, "READY "), 10, 16)
	if err != nil {
		stopRole(cmd, stdin)
		return nil, fmt.Errorf("connector process said %q", line)
	}
	p.cmd, p.stdin, p.lines, p.port = cmd, stdin, lines, uint16(port)
	return p, nil
}

func (p *connectorProc) stop() { stopRole(p.cmd, p.stdin) }

// openFlows asks the connector how many forwarded flows it has open; -1
// if it does not answer.
func (p *connectorProc) openFlows() int {
	if _, err := io.WriteString(p.stdin, "flows\n"); err != nil {
		return -1
	}
	select {
	case line := <-p.lines:
		n, err := strconv.Atoi(strings.TrimPrefix(line, "flows "))
		if err != nil {
			return -1
		}
		return n
	case <-time.After(5 * time.Second):
		return -1
	}
}

// clientConf is the client's configuration for connector p.
func (p *connectorProc) clientConf(n int) *wireguard.Config {
	return &wireguard.Config{
		Interface: wireguard.Interface{
			PrivateKey: p.clientKey,
			Addresses:  []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 95, byte(n), 2}), 32)},
			DNS:        []netip.Addr{p.tunnel},
		},
		Peers: []wireguard.Peer{{
			PublicKey:  p.connKey.PublicKey(),
			Endpoint:   netip.AddrPortFrom(loopback, p.port).String(),
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(p.tunnel, 32)},
		}},
	}
}

// connectorScenario: the library client in this process → WireGuard/UDP
// on 127.0.0.1 → the connector process → host sockets → the services on
// 127.0.0.1, reached by name.
func connectorScenario(s *setup) (*scenario, error) {
	proc, err := startConnectorProc(s, 1)
	if err != nil {
		return nil, err
	}
	c, err := client.New(client.Config{WireGuard: proc.clientConf(1), ListenAddr: loopback, HostDNS: []string{s.dns.Addr},
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		proc.stop()
		return nil, fmt.Errorf("connector: client: %w", err)
	}
	return &scenario{
		name: "connector",
		dial: func(ctx context.Context, svc string) (net.Conn, error) {
			return c.DialContext(ctx, "tcp", joinHostPort(appName, s.host.port(svc)))
		},
		resolve:   lookupWith(c.Resolver()),
		procs:     map[string]int{"connector": proc.cmd.Process.Pid},
		servers:   s.host,
		openFlows: proc.openFlows,
		debug:     func() { io.WriteString(proc.stdin, "stats\n"); time.Sleep(200 * time.Millisecond) },
		close: func() {
			c.Close()
			proc.stop()
		},
	}, nil
}

// socks5Scenario: the same path, with `appconnector client`'s SOCKS5 proxy
// in a separate process in front: this process speaks SOCKS5 to it.
func socks5Scenario(s *setup) (*scenario, error) {
	proc, err := startConnectorProc(s, 2)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(s.dir, "client")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		proc.stop()
		return nil, err
	}
	if err := writeConf(filepath.Join(dir, "client.conf"), proc.clientConf(2)); err != nil {
		proc.stop()
		return nil, err
	}
	cmd := exec.Command(s.self, "-role", "client", "-dir", dir, "-dns-upstream", s.dns.Addr)
	line, stdin, _, err := startRole(cmd)
	if err != nil {
		proc.stop()
		return nil, fmt.Errorf("client process: %w", err)
	}
	socksAddr := strings.TrimPrefix(line, "READY ")
	return &scenario{
		name: "socks5",
		dial: func(ctx context.Context, svc string) (net.Conn, error) {
			return socks5Connect(ctx, socksAddr, joinHostPort(appName, s.host.port(svc)))
		},
		procs:     map[string]int{"connector": proc.cmd.Process.Pid, "client": cmd.Process.Pid},
		servers:   s.host,
		openFlows: proc.openFlows,
		close: func() {
			stopRole(cmd, stdin)
			proc.stop()
		},
	}, nil
}

// startRole starts a helper process and waits for its "READY ..." line;
// later lines of its stdout arrive on lines.
func startRole(cmd *exec.Cmd) (string, io.WriteCloser, <-chan string, error) {
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, nil, err
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return "", nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", nil, nil, err
	}
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	select {
	case line, ok := <-lines:
		if !ok || !strings.HasPrefix(line, "READY ") {
			stopRole(cmd, stdin)
			return "", nil, nil, fmt.Errorf("did not start (said %q)", line)
		}
		return line, stdin, lines, nil
	case <-time.After(30 * time.Second):
		stopRole(cmd, stdin)
		return "", nil, nil, errors.New("did not start within 30s")
	}
}

// stopRole ends a helper process: closing its stdin asks it to stop.
func stopRole(cmd *exec.Cmd, stdin io.WriteCloser) {
	stdin.Close()
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

func writeConf(path string, c *wireguard.Config) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// socks5Connect opens a CONNECT to addr (host:port; the host a name the
// proxy resolves) through the SOCKS5 proxy at proxyAddr, and returns the
// *net.TCPConn, so bulk transfers can half-close it.
func socks5Connect(ctx context.Context, proxyAddr, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", proxyAddr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	host, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	req := []byte{5, 1, 0, 5, 1, 0, 3, byte(len(host))}
	req = append(req, host...)
	req = append(req, byte(port>>8), byte(port))
	if _, err := c.Write(req); err != nil {
		c.Close()
		return nil, err
	}
	var resp [2 + 10]byte // method choice, then a reply with an IPv4 bound address
	if _, err := io.ReadFull(c, resp[:]); err != nil {
		c.Close()
		return nil, err
	}
	if resp[1] != 0 || resp[3] != 0 {
		c.Close()
		return nil, fmt.Errorf("socks5: method %d, reply %d", resp[1], resp[3])
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// benchZone returns n names, each with its own address (never dialed),
// plus the services' name.
func benchZone(n int) (names []string, records []string) {
	records = append(records, appName+". 60 IN A 127.0.0.1")
	for i := range n {
		name := fmt.Sprintf("n%d.bench.example.", i)
		names = append(names, name)
		records = append(records, fmt.Sprintf("%s 60 IN A 11.%d.%d.%d", name, i>>16&255, i>>8&255, i&255))
	}
	return names, records
}

// keyPair generates the private keys of a server and its client.
func keyPair() (server, client wireguard.Key, err error) {
	if server, err = wireguard.GeneratePrivateKey(); err == nil {
		client, err = wireguard.GeneratePrivateKey()
	}
	return server, client, err
}
