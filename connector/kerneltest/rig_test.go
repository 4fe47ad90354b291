package kerneltest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector/wireguard"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// The rig's addresses, inside its namespaces only: 198.18.0.0/15
// (benchmarking) and ULA. The WireGuard UDP of both tunnels runs over
// IPv4 on the client–gw veth; inside the tunnels, IPv4 and IPv6.
const (
	cliUnder = "198.18.1.1" // client's end of the client–gw veth (c0)
	gwUnder  = "198.18.1.2" // gw's end (g0): the connector and the reference listen here
	gwUp     = "198.18.2.1" // gw's end of the gw–up veth (g1)
	gwUp6    = "fd00:2::1"
	upGw     = "198.18.2.2" // up's end (u0)
	upGw6    = "fd00:2::2"

	connPort = 51820 // the connector's WireGuard port
	refPort  = 51821 // the reference gateway's
	httpPort = 8080  // the upstream's
	tunMTU   = 1420  // every tunnel interface, the connector's default

	// Tunnel addresses: the connector's (its userspace stack answers
	// for them) and the client's on that tunnel; the reference
	// gateway's and the client's on the other.
	connTun4, connTun6       = "198.18.10.1", "fd00:10::1"
	cliConnTun4, cliConnTun6 = "198.18.10.2", "fd00:10::2"
	refTun4, refTun6         = "198.18.11.1", "fd00:11::1"
	cliRefTun4, cliRefTun6   = "198.18.11.2", "fd00:11::2"
)

// path is the way from the client to the upstream.
type path int

const (
	viaConnector path = iota
	viaReference
)

func (p path) String() string { return [...]string{"connector", "reference"}[p] }

// family is the IP version inside the tunnel.
type family int

const (
	v4 family = iota
	v6
)

func (f family) String() string { return [...]string{"v4", "v6"}[f] }

// The upstream's addresses: one routed through the connector (its
// policy's only routes), one through the reference, one that the client
// routes to the connector but the connector's policy does not.
var (
	upstreamVia = [2][2]string{
		viaConnector: {v4: "198.18.3.1", v6: "fd00:3::1"},
		viaReference: {v4: "198.18.4.1", v6: "fd00:4::1"},
	}
	unrouted = [2]string{v4: "198.18.5.1", v6: "fd00:5::1"}
)

// hostURL is the upstream's base URL on path p over f.
func hostURL(p path, f family) string {
	return "http://" + net.JoinHostPort(upstreamVia[p][f], strconv.Itoa(httpPort))
}

// rig is one run's namespaces and processes; a cleanup of its test
// removes them all.
type rig struct {
	t *testing.T
	rigNames
	dir    string // readable by everyone: configs and the connector binary's inputs
	state  string // the connector's state directory, owned by 65534
	upload string // a file of uploadSize zero bytes

	connArgs []string // how to start the connector
	cliWG    *proc    // the client's wireguard-go to the connector: its /proc/PID/net is the client namespace's
	cliPorts [2]int   // the client's WireGuard UDP ports, by path

	mu       sync.Mutex // guards the fields after it
	conn     *proc      // the connector process now running
	listenAt time.Time  // when it logged "wireguard up"
}

// newRig builds the namespaces, starts the upstream, the reference
// gateway, the connector and the client's tunnels, and checks that all
// four ways to the upstream (two paths, two families) carry a request.
func newRig(t *testing.T) *rig {
	t.Helper()
	needKernelTier(t)
	bin, err := connectorBinary()
	if err != nil {
		t.Fatal(err)
	}
	removeStale(t)
	r := &rig{t: t, rigNames: newRigNames()}
	if r.dir, err = os.MkdirTemp("", "appconnector-kerneltest-"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(r.dir) })
	r.state = filepath.Join(r.dir, "state")
	r.upload = filepath.Join(r.dir, "upload")
	r.must(os.Chmod(r.dir, 0o755))
	r.must(os.Mkdir(r.state, 0o700))
	r.must(os.Chown(r.state, 65534, 65534))
	r.must(os.WriteFile(r.upload, nil, 0o644))
	r.must(os.Truncate(r.upload, uploadSize))

	for _, ns := range []string{r.cli, r.gw, r.up} {
		if err := addNetns(t, ns); err != nil {
			skipOrFail(t, fmt.Sprintf("kernel-peer tier cannot make network namespaces: %v", err))
		}
	}
	r.links()
	r.startUpstream()

	connKey, cliConnKey := r.newKey(), r.newKey()
	refKey, cliRefKey := r.newKey(), r.newKey()

	// The reference gateway: wireguard-go on a kernel TUN, kernel IP
	// forwarding.
	r.startWG(r.gw, r.ifGw)
	r.sh(nsExec(r.gw, "wg", "set", r.ifGw, "listen-port", strconv.Itoa(refPort), "private-key", r.keyFile("ref", refKey),
		"peer", cliRefKey.PublicKey().String(), "allowed-ips", cliRefTun4+"/32,"+cliRefTun6+"/128")...)
	r.tunAddrs(r.gw, r.ifGw, refTun4+"/24", refTun6+"/64")

	// The connector.
	conf := fmt.Sprintf("[Interface]\nPrivateKey = %s\nAddress = %s/24, %s/64\nListenPort = %d\n\n[Peer]\nPublicKey = %s\nAllowedIPs = %s/32, %s/128\n",
		connKey, connTun4, connTun6, connPort, cliConnKey.PublicKey(), cliConnTun4, cliConnTun6)
	policy := fmt.Sprintf(`[{"name": "upstream", "connectors": ["*"], "domains": [], "routes": ["%s/32", "%s/128"]}]`,
		upstreamVia[viaConnector][v4], upstreamVia[viaConnector][v6])
	r.must(os.WriteFile(filepath.Join(r.dir, "wg0.conf"), []byte(conf), 0o644))
	r.must(os.WriteFile(filepath.Join(r.dir, "policy.json"), []byte(policy), 0o644))
	r.connArgs = nsExec(r.gw, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"--inh-caps=-all", "--bounding-set=-all", "--pdeathsig=keep", "--",
		bin, "up", "--config", filepath.Join(r.dir, "wg0.conf"), "--policy", filepath.Join(r.dir, "policy.json"),
		"--state", r.state, "--listen", net.JoinHostPort(gwUnder, strconv.Itoa(connPort)),
		"--dns-upstream", "127.0.0.1:53", "--drain-timeout", "1s")
	r.startConnector()

	// The client: one tunnel to each.
	r.cliWG = r.startWG(r.cli, r.ifConn)
	r.sh(nsExec(r.cli, "wg", "set", r.ifConn, "private-key", r.keyFile("cli-conn", cliConnKey),
		"peer", connKey.PublicKey().String(), "endpoint", net.JoinHostPort(gwUnder, strconv.Itoa(connPort)),
		"allowed-ips", strings.Join([]string{connTun4 + "/32", connTun6 + "/128",
			upstreamVia[viaConnector][v4] + "/32", upstreamVia[viaConnector][v6] + "/128", unrouted[v4] + "/32", unrouted[v6] + "/128"}, ","))...)
	r.tunAddrs(r.cli, r.ifConn, cliConnTun4+"/24", cliConnTun6+"/64",
		upstreamVia[viaConnector][v4]+"/32", upstreamVia[viaConnector][v6]+"/128", unrouted[v4]+"/32", unrouted[v6]+"/128")
	r.startWG(r.cli, r.ifRef)
	r.sh(nsExec(r.cli, "wg", "set", r.ifRef, "private-key", r.keyFile("cli-ref", cliRefKey),
		"peer", refKey.PublicKey().String(), "endpoint", net.JoinHostPort(gwUnder, strconv.Itoa(refPort)),
		"allowed-ips", strings.Join([]string{refTun4 + "/32", refTun6 + "/128",
			upstreamVia[viaReference][v4] + "/32", upstreamVia[viaReference][v6] + "/128"}, ","))...)
	r.tunAddrs(r.cli, r.ifRef, cliRefTun4+"/24", cliRefTun6+"/64",
		upstreamVia[viaReference][v4]+"/32", upstreamVia[viaReference][v6]+"/128")

	for p, dev := range [2]string{viaConnector: r.ifConn, viaReference: r.ifRef} {
		out := r.sh(nsExec(r.cli, "wg", "show", dev, "listen-port")...)
		port, err := strconv.Atoi(strings.TrimSpace(out))
		r.must(err)
		r.cliPorts[p] = port
	}
	r.setLoss(0)
	for _, p := range []path{viaConnector, viaReference} {
		for _, f := range []family{v4, v6} {
			r.waitReachable(p, f)
		}
	}
	return r
}

// must fails the test on err.
func (r *rig) must(err error) {
	r.t.Helper()
	if err != nil {
		r.t.Fatal(err)
	}
}

// sh runs a setup command; it fails the test on error.
func (r *rig) sh(args ...string) string {
	r.t.Helper()
	out, err := run(args...)
	r.must(err)
	return out
}

// links makes the veths, addresses and routes:
//
//	client c0 198.18.1.1 ── g0 198.18.1.2 gw g1 198.18.2.1 ── u0 198.18.2.2 up
//
// The upstream's service addresses are on its loopback; gw routes them
// to up, and up routes everything back to gw.
func (r *rig) links() {
	r.t.Helper()
	r.sh("ip", "-n", r.cli, "link", "add", "c0", "type", "veth", "peer", "name", "g0", "netns", r.gw)
	r.sh("ip", "-n", r.gw, "link", "add", "g1", "type", "veth", "peer", "name", "u0", "netns", r.up)
	// A veth passes a UDP GSO batch (the connector's wireguard-go sends
	// them; the distribution's does not) as one packet, and nftables
	// would drop the whole batch at once. A real NIC puts each
	// datagram on the wire on its own, to be lost on its own: so the
	// client's veth segments every batch before it carries it.
	r.sh("ip", "-n", r.cli, "link", "set", "dev", "c0", "gso_max_segs", "1")
	r.sh("ip", "-n", r.gw, "link", "set", "dev", "g0", "gso_max_segs", "1")
	for _, a := range [][]string{
		{r.cli, "c0", cliUnder + "/24"},
		{r.gw, "g0", gwUnder + "/24"},
		{r.gw, "g1", gwUp + "/24", gwUp6 + "/64"},
		{r.up, "u0", upGw + "/24", upGw6 + "/64"},
	} {
		for _, addr := range a[2:] {
			r.sh(addrAdd(a[0], a[1], addr)...)
		}
		r.sh("ip", "-n", a[0], "link", "set", a[1], "up")
	}
	for _, a := range []string{upstreamVia[viaConnector][v4], upstreamVia[viaReference][v4], unrouted[v4]} {
		r.sh(addrAdd(r.up, "lo", a+"/32")...)
		r.sh("ip", "-n", r.gw, "route", "add", a+"/32", "via", upGw)
	}
	for _, a := range []string{upstreamVia[viaConnector][v6], upstreamVia[viaReference][v6], unrouted[v6]} {
		r.sh(addrAdd(r.up, "lo", a+"/128")...)
		r.sh("ip", "-n", r.gw, "-6", "route", "add", a+"/128", "via", upGw6)
	}
	r.sh("ip", "-n", r.up, "route", "add", "default", "via", gwUp)
	r.sh("ip", "-n", r.up, "-6", "route", "add", "default", "via", gwUp6)
	// The reference forwards; the connector (uid and gid 65534) may open
	// ICMP sockets for pings.
	r.sh(nsExec(r.gw, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
		"net.ipv4.ping_group_range=65534 65534")...)
}

// addrAdd is the command that adds addr (no duplicate address detection
// for IPv6: usable at once) to dev in ns.
func addrAdd(ns, dev, addr string) []string {
	args := []string{"ip", "-n", ns, "addr", "add", addr, "dev", dev}
	if strings.Contains(addr, ":") {
		args = append(args, "nodad")
	}
	return args
}

// tunAddrs gives the wireguard-go interface dev in ns its addresses (the
// first two) and routes (the rest), MTU tunMTU, and brings it up.
func (r *rig) tunAddrs(ns, dev string, addrs ...string) {
	r.t.Helper()
	r.sh(addrAdd(ns, dev, addrs[0])...)
	r.sh(addrAdd(ns, dev, addrs[1])...)
	r.sh("ip", "-n", ns, "link", "set", dev, "mtu", strconv.Itoa(tunMTU), "up")
	for _, rt := range addrs[2:] {
		r.sh("ip", "-n", ns, "route", "add", rt, "dev", dev)
	}
}

// newKey is a new WireGuard private key.
func (r *rig) newKey() wireguard.Key {
	r.t.Helper()
	k, err := wireguard.GeneratePrivateKey()
	r.must(err)
	return k
}

// keyFile writes k for wg's private-key and returns the path.
func (r *rig) keyFile(name string, k wireguard.Key) string {
	r.t.Helper()
	p := filepath.Join(r.dir, name+".key")
	r.must(os.WriteFile(p, []byte(k.String()+"\n"), 0o600))
	return p
}

// startWG starts the distribution's wireguard-go for interface dev in ns,
// in the foreground, and waits for its UAPI socket.
func (r *rig) startWG(ns, dev string) *proc {
	r.t.Helper()
	sock := filepath.Join(wgSockDir, dev+".sock")
	// Killed, wireguard-go leaves its socket; this cleanup runs after
	// the kill.
	r.t.Cleanup(func() { os.Remove(sock) })
	p, err := startProc(r.t, "wireguard-go "+dev, append(os.Environ(), "WG_PROCESS_FOREGROUND=1", "LOG_LEVEL=error"), nil,
		nsExec(ns, "wireguard-go", "-f", dev)...)
	r.must(err)
	r.must(p.waitFor(10*time.Second, "UAPI socket "+sock, func() bool { _, err := os.Stat(sock); return err == nil }))
	return p
}

// startUpstream starts the test binary as the upstream HTTP server in up.
func (r *rig) startUpstream() {
	r.t.Helper()
	self, err := os.Executable()
	r.must(err)
	ready := make(chan struct{})
	var once sync.Once
	p, err := startProc(r.t, "upstream", append(os.Environ(), netstacktest.RoleEnv("upstream")),
		func(line string) {
			if strings.HasPrefix(line, upstreamReady) {
				once.Do(func() { close(ready) })
			}
		}, nsExec(r.up, self, ":"+strconv.Itoa(httpPort))...)
	r.must(err)
	r.must(p.waitFor(20*time.Second, "listening", func() bool {
		select {
		case <-ready:
			return true
		default:
			return false
		}
	}))
}

// startConnector starts the connector as an unprivileged process in gw
// and waits until it logs that WireGuard is up; it returns that moment.
func (r *rig) startConnector() time.Time {
	r.t.Helper()
	up := make(chan time.Time, 1)
	p, err := startProc(r.t, "connector", os.Environ(), func(line string) {
		if strings.Contains(line, `msg="wireguard up"`) {
			select {
			case up <- time.Now():
			default:
			}
		}
	}, r.connArgs...)
	r.must(err)
	var at time.Time
	r.must(p.waitFor(30*time.Second, `"wireguard up"`, func() bool {
		select {
		case at = <-up:
			return true
		default:
			return false
		}
	}))
	r.mu.Lock()
	r.conn, r.listenAt = p, at
	r.mu.Unlock()
	return at
}

// stopConnector stops the connector with SIGTERM as an operator would;
// it fails the test unless the connector exits 0 within its drain
// timeout and a few seconds.
func (r *rig) stopConnector() {
	r.t.Helper()
	r.mu.Lock()
	p := r.conn
	r.mu.Unlock()
	if err := p.stop(syscall.SIGTERM, 10*time.Second); err != nil {
		r.t.Fatalf("stop the connector: %v\n%s", err, p.output())
	}
}

// connectorLog is the running connector's output so far.
func (r *rig) connectorLog() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conn.output()
}

// waitReachable waits up to 15 s for a small request on path p over f
// to succeed.
func (r *rig) waitReachable(p path, f family) {
	r.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := r.small(p, f, 3*time.Second)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("upstream not reachable via the %v over %v: %v\nconnector log:\n%s", p, f, err, r.connectorLog())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// small makes one short HTTP request on a new connection on path p over
// f and returns how long it took, as the client's curl measures it.
func (r *rig) small(p path, f family, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout+5*time.Second)
	defer cancel()
	cmd := command(ctx, nsExec(r.cli, "curl", "-sS", "--max-time", fmt.Sprint(timeout.Seconds()),
		"-w", "\n%{time_total}", hostURL(p, f)+"/small")...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("curl %s/small: %w: %s", hostURL(p, f), err, strings.TrimSpace(string(out)))
	}
	body, total, _ := strings.Cut(string(out), "\n")
	if body != "ok" {
		return 0, fmt.Errorf("curl %s/small: body %q, want ok", hostURL(p, f), body)
	}
	secs, err := strconv.ParseFloat(strings.TrimSpace(total), 64)
	if err != nil {
		return 0, fmt.Errorf("curl %s/small: time %q: %w", hostURL(p, f), total, err)
	}
	return time.Duration(secs * float64(time.Second)), nil
}

// lossTable is the client namespace's nftables table of the loss rules.
const lossTable = "ackt_loss"

// setLoss drops pct% of the WireGuard UDP packets of both tunnels, each
// way, on the client's veth (c0), and counts them all anew.
func (r *rig) setLoss(pct int) {
	r.t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %[1]s\ndelete table inet %[1]s\ntable inet %[1]s {\n", lossTable)
	for _, name := range lossCounters {
		fmt.Fprintf(&b, "\tcounter %s {}\n", name)
	}
	for _, dir := range []struct{ chain, hook, ifMatch, portMatch string }{
		{"out", "output", "oifname", "dport"},
		{"in", "input", "iifname", "sport"},
	} {
		fmt.Fprintf(&b, "\tchain %s {\n\t\ttype filter hook %s priority 0; policy accept;\n", dir.chain, dir.hook)
		for _, p := range []struct {
			name string
			port int
		}{{"conn", connPort}, {"ref", refPort}} {
			match := fmt.Sprintf(`%s "c0" udp %s %d`, dir.ifMatch, dir.portMatch, p.port)
			fmt.Fprintf(&b, "\t\t%s counter name %s_%s\n", match, p.name, dir.chain)
			if pct > 0 {
				fmt.Fprintf(&b, "\t\t%s numgen random mod 100 < %d counter name %s_%s_drop drop\n", match, pct, p.name, dir.chain)
			}
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	if _, err := runStdin(b.String(), nsExec(r.cli, "nft", "-f", "-")...); err != nil {
		r.t.Fatalf("set %d%% loss: %v\n%s", pct, err, b.String())
	}
}

// lossCounters are the counters of the loss table: packets of each
// tunnel each way, and those dropped.
var lossCounters = []string{"conn_out", "conn_out_drop", "conn_in", "conn_in_drop", "ref_out", "ref_out_drop", "ref_in", "ref_in_drop"}

// lossCounts reads the loss table's packet counters.
func (r *rig) lossCounts() (map[string]int64, error) {
	out, err := run(nsExec(r.cli, "nft", "-j", "list", "counters", "table", "inet", lossTable)...)
	if err != nil {
		return nil, err
	}
	var doc struct {
		Nftables []struct {
			Counter *struct {
				Name    string `json:"name"`
				Packets int64  `json:"packets"`
			} `json:"counter"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return nil, fmt.Errorf("nft counters: %w", err)
	}
	m := map[string]int64{}
	for _, e := range doc.Nftables {
		if e.Counter != nil {
			m[e.Counter.Name] = e.Counter.Packets
		}
	}
	return m, nil
}

// socketDrops is how many datagrams the client's kernel dropped at the
// WireGuard UDP sockets of the tunnel of path p (full receive buffer,
// mostly): the drops column of /proc/net/udp and udp6.
func (r *rig) socketDrops(p path) (int64, error) {
	var total int64
	for _, file := range []string{"udp", "udp6"} {
		name := fmt.Sprintf("/proc/%d/net/%s", r.cliWG.cmd.Process.Pid, file)
		data, err := os.ReadFile(name)
		if err != nil {
			return 0, err
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 13 {
				continue
			}
			_, port, ok := strings.Cut(f[1], ":")
			if n, err := strconv.ParseInt(port, 16, 32); !ok || err != nil || int(n) != r.cliPorts[p] {
				continue
			}
			d, err := strconv.ParseInt(f[len(f)-1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: drops %q: %w", name, f[len(f)-1], err)
			}
			total += d
		}
	}
	return total, nil
}

// metrics reads the connector's Prometheus metrics through its admin
// socket: each sample line's value by its name and labels as written
// (`appconnector_flows_open{proto="tcp"}`).
func (r *rig) metrics() (map[string]float64, error) {
	sock := filepath.Join(r.state, "admin.sock")
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://admin/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("connector metrics: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("connector metrics: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("connector metrics: %s", resp.Status)
	}
	m := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m, nil
}
