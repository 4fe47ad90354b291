package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/appconnector/appconnector/connector/wireguard"
)

// errSkipped marks a scenario this machine cannot run; run says why and
// goes on without it.
type errSkipped struct{ why string }

func (e errSkipped) Error() string { return "skipped: " + e.why }

// The kernel scenario's addresses: a veth pair between this namespace
// (kernelHost, where the services listen for it) and the gateway's
// (kernelGW), and the tunnel inside.
var (
	kernelHost      = netip.MustParseAddr("10.201.0.1")
	kernelGW        = netip.MustParseAddr("10.201.0.2")
	kernelTunGW     = netip.MustParseAddr("10.97.0.1")
	kernelTunClient = netip.MustParseAddr("10.97.0.2")
)

// kernelScenario is the classic privileged gateway this project replaces:
// the distribution's wireguard-go on a kernel TUN in a network namespace
// of its own, forwarding by the kernel (masqueraded) to the services,
// which listen on this namespace's end of a veth pair to it. The client
// is the userspace device of the connector scenario's client library, in
// this process. It needs root, ip, wg, wireguard-go and nft; without them
// it is skipped.
func kernelScenario(s *setup) (*scenario, error) {
	if os.Geteuid() != 0 {
		return nil, errSkipped{"needs root (network namespaces, a kernel TUN, IP forwarding)"}
	}
	for _, tool := range []string{"ip", "wg", "wireguard-go", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, errSkipped{tool + " is not installed"}
		}
	}
	tag := strconv.Itoa(os.Getpid() % 100000)
	ns, vethHost, vethGW, dev := "acbench"+tag, "acbh"+tag, "acbg"+tag, "acbw"+tag
	k := &kernelGateway{ns: ns, dev: dev}
	fail := func(err error) (*scenario, error) {
		k.stop()
		return nil, fmt.Errorf("kernel: %w", err)
	}
	gwKey, clientKey, err := keyPair()
	if err != nil {
		return nil, err
	}
	keyFile := filepath.Join(s.dir, "kernel.key")
	if err := os.WriteFile(keyFile, []byte(gwKey.String()+"\n"), 0o600); err != nil {
		return nil, err
	}
	const port = 51999
	steps := [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "link", "add", vethHost, "type", "veth", "peer", "name", vethGW, "netns", ns},
		{"ip", "addr", "add", kernelHost.String() + "/30", "dev", vethHost},
		{"ip", "link", "set", vethHost, "up"},
		{"ip", "-n", ns, "addr", "add", kernelGW.String() + "/30", "dev", vethGW},
		{"ip", "-n", ns, "link", "set", vethGW, "up"},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"},
	}
	k.created = true
	for _, st := range steps {
		if err := k.sh(st...); err != nil {
			return fail(err)
		}
	}
	// wireguard-go in the foreground, its UAPI socket in the usual place.
	k.sock = filepath.Join("/var/run/wireguard", dev+".sock")
	k.wg = exec.Command("ip", "netns", "exec", ns, "wireguard-go", "-f", dev)
	k.wg.Env = append(os.Environ(), "WG_PROCESS_FOREGROUND=1", "LOG_LEVEL=error")
	k.wg.Stderr = os.Stderr
	if err := k.wg.Start(); err != nil {
		return fail(err)
	}
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(k.sock); err == nil {
			break
		}
		if time.Now().After(end) {
			return fail(errors.New("wireguard-go made no UAPI socket within 10 s"))
		}
	}
	for _, st := range [][]string{
		{"ip", "netns", "exec", ns, "wg", "set", dev, "listen-port", strconv.Itoa(port), "private-key", keyFile,
			"peer", clientKey.PublicKey().String(), "allowed-ips", kernelTunClient.String() + "/32"},
		{"ip", "-n", ns, "addr", "add", kernelTunGW.String() + "/24", "dev", dev},
		{"ip", "-n", ns, "link", "set", dev, "mtu", "1420", "up"},
	} {
		if err := k.sh(st...); err != nil {
			return fail(err)
		}
	}
	// Replies from the services go back to the gateway's veth address.
	nat := fmt.Sprintf("table ip acbench {\n chain post {\n  type nat hook postrouting priority 100;\n  oifname %q masquerade\n }\n}\n", vethGW)
	nft := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	nft.Stdin = strings.NewReader(nat)
	if out, err := nft.CombinedOutput(); err != nil {
		return fail(fmt.Errorf("nft: %v: %s", err, out))
	}
	srv, err := startServers(func() (net.Listener, error) { return net.Listen("tcp", netip.AddrPortFrom(kernelHost, 0).String()) })
	if err != nil {
		return fail(err)
	}
	k.servers = srv
	// The client is the userspace device the connector scenario's client
	// library runs on: the same client, another gateway.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cdev, err := wireguard.NewDevice(ctx, wireguard.DeviceConfig{
		Config: &wireguard.Config{
			Interface: wireguard.Interface{PrivateKey: clientKey, Addresses: []netip.Prefix{netip.PrefixFrom(kernelTunClient, 32)}},
			Peers: []wireguard.Peer{{
				PublicKey:  gwKey.PublicKey(),
				Endpoint:   netip.AddrPortFrom(kernelGW, port).String(),
				AllowedIPs: []netip.Prefix{netip.PrefixFrom(kernelHost, 32), netip.PrefixFrom(kernelTunGW, 32)},
			}},
		},
		ListenAddr: kernelHost,
	})
	if err != nil {
		return fail(err)
	}
	k.client = cdev.Close
	return &scenario{
		name: "kernel",
		dial: func(ctx context.Context, svc string) (net.Conn, error) {
			return cdev.Stack.DialContext(ctx, "tcp", joinHostPort(kernelHost.String(), srv.port(svc)))
		},
		procs:   map[string]int{"gateway": k.wg.Process.Pid},
		servers: srv,
		close:   k.stop,
	}, nil
}

// kernelGateway is what kernelScenario set up, for stop to take down.
type kernelGateway struct {
	ns, dev, sock string
	created       bool
	wg            *exec.Cmd
	servers       *servers
	client        func()
}

func (k *kernelGateway) sh(args ...string) error {
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// stop closes the client, the servers and wireguard-go, and deletes the
// namespace (with it the veth pair and the TUN device).
func (k *kernelGateway) stop() {
	if k.client != nil {
		k.client()
	}
	if k.servers != nil {
		k.servers.stop()
	}
	if k.wg != nil && k.wg.Process != nil {
		k.wg.Process.Kill()
		k.wg.Wait()
		os.Remove(k.sock)
	}
	if k.created {
		k.sh("ip", "netns", "del", k.ns)
	}
}
