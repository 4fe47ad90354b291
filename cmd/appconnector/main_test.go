package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector/dnstest"
	"github.com/appconnector/appconnector/connector/dnszone"
	"github.com/appconnector/appconnector/connector/wireguard"
	"github.com/appconnector/appconnector/connector/wireguard/wgtest"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// asMain, in a command's environment, makes the test binary the
// appconnector binary: the process tests run it as a separate,
// unprivileged process.
var asMain = netstacktest.RoleEnv("appconnector")

func TestMain(m *testing.M) {
	os.Exit(netstacktest.Main(m, map[string]func([]string) int{"appconnector": func(args []string) int {
		return run(args, os.Stdin, os.Stdout, os.Stderr)
	}}))
}

func TestGenkeyPubkey(t *testing.T) {
	// RFC 7748 section 6.1, Alice's key pair.
	priv, _ := hex.DecodeString("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
	pub, _ := hex.DecodeString("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
	var out, errb bytes.Buffer
	in := strings.NewReader(base64.StdEncoding.EncodeToString(priv) + "\n")
	if code := run([]string{"pubkey"}, in, &out, &errb); code != 0 {
		t.Fatalf("pubkey: exit %d: %s", code, errb.String())
	}
	if got, want := strings.TrimSpace(out.String()), base64.StdEncoding.EncodeToString(pub); got != want {
		t.Errorf("pubkey = %s, want %s", got, want)
	}

	out.Reset()
	if code := run([]string{"genkey"}, nil, &out, &errb); code != 0 {
		t.Fatalf("genkey: exit %d", code)
	}
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(out.String()))
	if err != nil || len(k) != 32 {
		t.Fatalf("genkey printed %q", out.String())
	}
	if k[0]&7 != 0 || k[31]&0x80 != 0 || k[31]&0x40 == 0 {
		t.Errorf("genkey key is not clamped: %x", k)
	}
	// wireguard-tools, where installed, must agree.
	if wg, err := exec.LookPath("wg"); err == nil {
		cmd := exec.Command(wg, "pubkey")
		cmd.Stdin = strings.NewReader(out.String())
		got, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		var mine bytes.Buffer
		run([]string{"pubkey"}, strings.NewReader(out.String()), &mine, io.Discard)
		if !bytes.Equal(got, mine.Bytes()) {
			t.Errorf("wg pubkey = %q, ours = %q", got, mine.String())
		}
	}

	if code := run([]string{"pubkey"}, strings.NewReader("not a key"), io.Discard, &errb); code == 0 {
		t.Error("pubkey accepted garbage")
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"up", "--log-level", "loud"},
		{"up", "extra"},
		{"up", "--listen", "not-an-address"},
		{"up", "--route-ttl-min", "2h", "--route-ttl-max", "1h"},
		{"up", "--route-ttl-max", "0"},
		{"up", "--route-grace", "-1s"},
		{"up", "--dns-upstream", "udp://192.0.2.1"},
		{"up", "--dns-upstream-ca", "/nonexistent/ca.pem"},
	} {
		var errb bytes.Buffer
		if code := run(args, nil, io.Discard, &errb); code == 0 {
			t.Errorf("run(%q) = 0, want an error", args)
		} else if errb.Len() == 0 {
			t.Errorf("run(%q): no message", args)
		}
	}
}

func TestBadConfigNamesFileLineKey(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "wg0.conf")
	key, _ := wireguard.GeneratePrivateKey()
	os.WriteFile(conf, []byte("[Interface]\nPrivateKey = "+key.String()+"\nAddress = 10.0.0.1/24\nListenPort = seventy\n"), 0o600)
	var errb bytes.Buffer
	if code := run([]string{"up", "--config", conf, "--listen", "127.0.0.1:0"}, nil, io.Discard, &errb); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	for _, want := range []string{"wg0.conf:4", "ListenPort", "seventy"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("error %q does not mention %q", errb.String(), want)
		}
	}
	pol := filepath.Join(dir, "policy.json")
	os.WriteFile(pol, []byte(`[{"name": "a", "connectors": ["*"], "routes": ["192.0.2.1/24"]}]`), 0o600)
	errb.Reset()
	if code := run([]string{"up", "--policy", pol, "--state", dir}, nil, io.Discard, &errb); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	for _, want := range []string{"policy.json:1", `"a"`, "routes", "192.0.2.1/24"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("error %q does not mention %q", errb.String(), want)
		}
	}
}

// TestEmbeddedDefault runs "up" with only a state directory (and a fixed
// loopback listen address for the test), connects the generated client
// config, and checks that a second start reuses the identity.
func TestEmbeddedDefault(t *testing.T) {
	netstacktest.CheckLeaks(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	pol := filepath.Join(dir, "policy.json")
	os.WriteFile(pol, []byte(`[{"name": "lo", "connectors": ["*"], "routes": ["127.0.0.1/32"]}]`), 0o600)
	listen := netstacktest.ClosedPort(t, "udp", "127.0.0.1").String()
	upstream := netstacktest.TCPEcho(t, "127.0.0.1:0")

	flowLog := filepath.Join(dir, "flows.log")
	var firstKey string
	for round := range 2 {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		var out netstacktest.SyncBuffer
		reload := make(chan os.Signal, 1)
		go func() {
			done <- runUp(ctx, upFlags{state: state, policy: pol, listen: listen, tags: "tag:connector", flowLog: flowLog}, reload, &out, testLogger(t))
		}()
		clientPath := filepath.Join(state, "client.conf")
		netstacktest.WaitFor(t, func() bool { return strings.Contains(out.String(), "client config: "+clientPath) })

		connConf, _, err := wireguard.Load(filepath.Join(state, "connector.conf"))
		if err != nil {
			t.Fatal(err)
		}
		if round == 0 {
			firstKey = connConf.Interface.PrivateKey.String()
		} else if connConf.Interface.PrivateKey.String() != firstKey {
			t.Fatal("second start generated a new key")
		}
		clientPort := echoThroughClientConf(t, clientPath, upstream)
		if round == 1 {
			// logrotate's way: move the file, then SIGHUP.
			if err := os.Rename(flowLog, flowLog+".1"); err != nil {
				t.Fatal(err)
			}
			reload <- syscall.SIGHUP
			netstacktest.WaitFor(t, func() bool { _, err := os.Stat(flowLog); return err == nil })
			clientPort = echoThroughClientConf(t, clientPath, upstream)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("round %d: up: %v", round, err)
		}
		// Each round's flows are in the flow log; after the SIGHUP, in
		// the new file.
		for _, name := range []string{flowLog, flowLog + ".1"} {
			if round == 0 && name != flowLog {
				continue
			}
			data, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			var r struct {
				Peer string         `json:"peer"`
				Dst  netip.AddrPort `json:"dst"`
				End  string         `json:"end"`
			}
			line, _, _ := strings.Cut(string(data), "\n")
			if err := json.Unmarshal([]byte(line), &r); err != nil || r.Dst != upstream || r.Peer == "" || r.End == "" {
				t.Errorf("round %d: %s: first line %q (%v), want a flow to %v", round, name, line, err, upstream)
			}
			if fi, err := os.Stat(name); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("%s: mode %v, %v; want 0600", name, fi.Mode(), err)
			}
		}
		cc, _, err := wireguard.Load(clientPath)
		if err != nil {
			t.Fatal(err)
		}
		checkStoredEndpoint(t, state, cc.Interface.PrivateKey.PublicKey(), netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), clientPort))
	}
	if fi, err := os.Stat(filepath.Join(state, "client.conf")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("client.conf mode = %v, %v; want 0600", fi.Mode(), err)
	}
}

// checkStoredEndpoint checks that endpoints.json in the state directory
// holds exactly the peer with public key key, at ep.
func checkStoredEndpoint(t *testing.T, state string, key wireguard.Key, ep netip.AddrPort) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(state, "endpoints.json"))
	if err != nil {
		t.Fatalf("peer endpoints not saved: %v", err)
	}
	var f struct {
		Peers []struct {
			PublicKey wireguard.Key  `json:"publicKey"`
			Endpoint  netip.AddrPort `json:"endpoint"`
		} `json:"peers"`
	}
	if err := json.Unmarshal(data, &f); err != nil || len(f.Peers) != 1 || f.Peers[0].PublicKey != key || f.Peers[0].Endpoint != ep {
		t.Errorf("endpoints.json (%v), want only %v at %v:\n%s", err, key, ep, data)
	}
}

// echoThroughClientConf starts a client from a wg-quick file, echoes a
// message through the tunnel to upstream, and returns the client's UDP
// port.
func echoThroughClientConf(t *testing.T, path string, upstream netip.AddrPort) uint16 {
	t.Helper()
	cc, _, err := wireguard.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if !containsPrefix(cc.Peers[0].AllowedIPs, upstream.Addr()) {
		t.Fatalf("client AllowedIPs %v do not cover the route %v", cc.Peers[0].AllowedIPs, upstream.Addr())
	}
	ep := netip.MustParseAddrPort(cc.Peers[0].Endpoint)
	client, err := wgtest.New(wgtest.Config{
		PrivateKey: cc.Interface.PrivateKey,
		Addresses:  cc.Interface.Addresses,
		Remotes: []wireguard.Peer{{
			PublicKey:    cc.Peers[0].PublicKey,
			PresharedKey: cc.Peers[0].PresharedKey,
			Endpoint:     ep.String(),
			AllowedIPs:   cc.Peers[0].AllowedIPs,
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	echo(t, client, upstream, 64<<10)
	return client.Port
}

func containsPrefix(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// echo sends n random bytes to a TCP echo server through the client and
// checks they come back.
func echo(t *testing.T, client *wgtest.Peer, upstream netip.AddrPort, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.DialContext(ctx, "tcp", upstream.String())
	if err != nil {
		t.Fatalf("dial %v through the tunnel: %v", upstream, err)
	}
	defer c.Close()
	netstacktest.EchoTCP(t, c, n)
}

// TestUnprivilegedProcess runs the connector as a separate process with no
// privileges (uid/gid 65534, no capabilities, no groups) and drives the
// whole data path through it.
func TestUnprivilegedProcess(t *testing.T) {
	netstacktest.CheckLeaks(t)
	var prefix []string
	if os.Geteuid() == 0 {
		setpriv, err := exec.LookPath("setpriv")
		if err != nil {
			t.Skip("setpriv (util-linux) is not installed: cannot drop root privileges for this test")
		}
		prefix = []string{setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--"}
	} // else: already unprivileged; run it directly.

	// Everything the process reads must be readable by nobody.
	dir, bin := sharedDir(t)

	serverKey, _ := wireguard.GeneratePrivateKey()
	clientKey, _ := wireguard.GeneratePrivateKey()
	connConf := &wireguard.Config{
		Interface: wireguard.Interface{PrivateKey: serverKey, Addresses: []netip.Prefix{
			netip.MustParsePrefix("10.98.0.1/24"), netip.MustParsePrefix("fd98::1/64")}},
		Peers: []wireguard.Peer{{PublicKey: clientKey.PublicKey(), AllowedIPs: []netip.Prefix{
			netip.MustParsePrefix("10.98.0.2/32"), netip.MustParsePrefix("fd98::2/128")}}},
	}
	var cb bytes.Buffer
	cb.WriteString("# a plain wg-quick file: these keys mean nothing here\n")
	connConf.WriteTo(&cb)
	conf := strings.Replace(cb.String(), "[Interface]\n", "[Interface]\nDNS = 10.98.0.1\nPostUp = iptables -A FORWARD -j ACCEPT\n", 1)
	os.WriteFile(filepath.Join(dir, "wg0.conf"), []byte(conf), 0o644)
	policyPath := filepath.Join(dir, "policy.json")
	basePolicy := `{"name": "lo", "connectors": ["tag:connector"], "domains": ["example.com"], "routes": ["127.0.0.1/32", "::1/128"]}`
	dnsApp := `{"name": "dns", "connectors": ["*"], "domains": ["app.example.com"], "allowPrivate": ["127.0.0.2/32"]}`
	os.WriteFile(policyPath, []byte("["+basePolicy+", "+dnsApp+"]"), 0o644)
	upstream := dnstest.New(t, "app.example.com. 60 IN A 127.0.0.2")
	state := filepath.Join(dir, "state")
	os.Mkdir(state, 0o700)
	os.Chown(state, 65534, 65534)

	args := append(prefix, bin, "up", "--config", filepath.Join(dir, "wg0.conf"), "--policy", filepath.Join(dir, "policy.json"),
		"--state", state, "--listen", "127.0.0.1:0", "--log-level", "debug", "--dns-upstream", upstream.Addr,
		// A flow still closing at SIGTERM may hold the exit this long;
		// well inside the 10 s the test allows.
		"--drain-timeout", "3s")
	proc := startConnectorProc(t, args)
	cmd, port := proc.cmd, proc.port

	// It really runs as nobody with no capabilities.
	status, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		for _, want := range []string{"Uid:\t65534\t65534\t65534\t65534", "Gid:\t65534\t65534\t65534\t65534", "CapEff:\t0000000000000000", "CapBnd:\t0000000000000000"} {
			if !strings.Contains(string(status), want) {
				t.Errorf("process status lacks %q", want)
			}
		}
	}
	for _, want := range []string{"DNS", "PostUp"} {
		if !strings.Contains(proc.logText(), want) {
			t.Errorf("no warning about the ignored key %s", want)
		}
	}

	client, err := wgtest.New(wgtest.Config{
		PrivateKey: clientKey,
		Addresses:  []netip.Prefix{netip.MustParsePrefix("10.98.0.2/32"), netip.MustParsePrefix("fd98::2/128")},
		Remotes: []wireguard.Peer{{
			PublicKey:  serverKey.PublicKey(),
			Endpoint:   netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String(),
			AllowedIPs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	echo(t, client, netstacktest.TCPEcho(t, "127.0.0.1:0"), 1<<20)
	echo(t, client, netstacktest.TCPEcho(t, "[::1]:0"), 256<<10)

	// UDP.
	srv := netstacktest.UDPEcho(t, "127.0.0.1:0")
	uc, err := client.DialContext(context.Background(), "udp", srv.Addr.String())
	if err != nil {
		t.Fatal(err)
	}
	uc.Write([]byte("datagram"))
	uc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	if n, err := uc.Read(buf); err != nil || string(buf[:n]) != "datagram" {
		t.Fatalf("udp echo: %q, %v", buf[:n], err)
	}
	uc.Close()

	// Outside the routes: reset within a second, and the upstream never
	// sees a connection.
	outside, accepts := countingListener(t, "127.0.0.2:0")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_, err = client.DialContext(ctx, "tcp", outside.String())
	cancel()
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial outside the routes: err = %v; want a prompt reset", err)
	}
	if n := accepts.Load(); n != 0 {
		t.Errorf("upstream outside the routes accepted %d connections", n)
	}

	// DNS through the tunnel: the answer installs the route.
	learnedEcho := netstacktest.TCPEcho(t, "127.0.0.2:0")
	if tryDial(client, learnedEcho) == nil {
		t.Fatal("127.0.0.2 reachable before its name was resolved")
	}
	dc, err := client.DialContext(context.Background(), "udp", "10.98.0.1:53")
	if err != nil {
		t.Fatal(err)
	}
	dc.SetDeadline(time.Now().Add(10 * time.Second))
	rcode, addrs, err := dnszone.Query(dc, "app.example.com", "A")
	dc.Close()
	if err != nil || rcode != "NOERROR" || len(addrs) != 1 {
		t.Fatalf("query through the tunnel: %s %v %v", rcode, addrs, err)
	}
	if err := tryDial(client, learnedEcho); err != nil {
		t.Fatalf("first connection after the answer: %v", err)
	}
	// The routes command reads the table through the admin socket.
	routesOut := func() string {
		var out, errb bytes.Buffer
		if code := run([]string{"routes", "--state", state}, nil, &out, &errb); code != 0 {
			t.Fatalf("routes: exit %d: %s", code, errb.String())
		}
		return out.String()
	}
	if out := routesOut(); !strings.Contains(out, "127.0.0.2/32") || !strings.Contains(out, "app.example.com") {
		t.Errorf("routes output lacks the learned route:\n%s", out)
	}

	// An invalid policy is rejected and the old one stays.
	os.WriteFile(policyPath, []byte(`[{"name": "lo", "connectors": ["tag:connector"], "routes": ["127.0.0.1/8"]}]`), 0o644)
	cmd.Process.Signal(syscall.SIGHUP)
	netstacktest.WaitFor(t, func() bool { return strings.Contains(proc.logText(), "new policy rejected") })
	if err := tryDial(client, learnedEcho); err != nil {
		t.Fatalf("an invalid policy changed forwarding: %v", err)
	}
	// Removing the app withdraws its learned route (picked up on change,
	// without a signal).
	os.WriteFile(policyPath, []byte("["+basePolicy+"]"), 0o644)
	netstacktest.WaitFor(t, func() bool { return !strings.Contains(routesOut(), "127.0.0.2/32") })
	if tryDial(client, learnedEcho) == nil {
		t.Error("route of a removed app still forwarded")
	}

	// The route API holds a peer to its caps (issue 11: 3,000 watch
	// streams grew the process by 109 MiB): 4 watch streams, the rest
	// answered 429; an endless header refused long before 1 MiB.
	routeAPIFlood(t, client, "10.98.0.1")

	// SIGTERM: a clean exit.
	cmd.Process.Signal(syscall.SIGTERM)
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	select {
	case err := <-waitErr:
		proc.exited()
		if err != nil {
			t.Errorf("connector exit: %v", err)
		}
		// With --config too, it kept where the client was, for its
		// next start.
		checkStoredEndpoint(t, state, clientKey.PublicKey(), netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), client.Port))
	case <-time.After(10 * time.Second):
		t.Error("connector did not exit within 10s of SIGTERM")
		cmd.Process.Kill()
		<-waitErr // Wait is running already: the cleanup must not call it again
		proc.exited()
	}
}

// routeAPIFlood opens 12 watch streams and one request with a 64 KiB
// header against the route API at addr through client.
func routeAPIFlood(t *testing.T, client *wgtest.Peer, addr string) {
	t.Helper()
	tr := &http.Transport{DialContext: client.DialContext, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	served, refused := 0, 0
	var open []io.Closer
	for range 12 {
		resp, err := hc.Get("http://" + addr + "/v1/routes?watch=1")
		if err != nil {
			t.Fatalf("route API watch: %v", err)
		}
		open = append(open, resp.Body)
		switch resp.StatusCode {
		case http.StatusOK:
			served++
		case http.StatusTooManyRequests:
			refused++
		}
	}
	for _, b := range open {
		b.Close()
	}
	if served != 4 || refused != 8 {
		t.Errorf("route API: %d watch streams served, %d refused (429); want 4 and 8", served, refused)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.DialContext(ctx, "tcp", net.JoinHostPort(addr, "80"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /v1/routes HTTP/1.1\r\nHost: x\r\n")
	filler := "X-Filler: " + strings.Repeat("a", 1000) + "\r\n"
	// 64 KiB of header (net/http's default limit is 1 MiB: it would
	// wait for more); 431 must come back within the deadline.
	sent := 0
	for ; sent < 64<<10; sent += len(filler) {
		if _, err := io.WriteString(c, filler); err != nil {
			break
		}
	}
	if status, err := bufio.NewReader(c).ReadString('\n'); err != nil || !strings.Contains(status, "431") {
		t.Errorf("route API: after a %d-byte header: answer %q, %v; want 431", sent, status, err)
	}
}

// connectorProc is the connector running as a separate process.
type connectorProc struct {
	cmd  *exec.Cmd
	port uint16 // its WireGuard port

	mu      sync.Mutex // guards the fields after it
	log     strings.Builder
	waited  bool
	logDone chan struct{}
}

// startConnectorProc runs args (the test binary as appconnector, maybe
// behind setpriv or prlimit) and waits up to 30 s for its "wireguard up"
// line on 127.0.0.1. The test's cleanup kills it unless exited was
// called, and prints its log if the test failed.
func startConnectorProc(t *testing.T, args []string) *connectorProc {
	t.Helper()
	p := &connectorProc{cmd: exec.Command(args[0], args[1:]...), logDone: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), asMain)
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	portc := make(chan uint16, 1)
	go func() {
		defer close(p.logDone)
		re := regexp.MustCompile(`msg="wireguard up" listen=127\.0\.0\.1:(\d+)`)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.log.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				port, _ := strconv.ParseUint(m[1], 10, 16)
				portc <- uint16(port)
			}
		}
	}()
	t.Cleanup(func() {
		p.mu.Lock()
		waited := p.waited
		p.mu.Unlock()
		if !waited {
			p.cmd.Process.Kill()
			p.cmd.Wait()
		}
		<-p.logDone
		if t.Failed() {
			t.Logf("connector log:\n%s", p.logText())
		}
	})
	select {
	case p.port = <-portc:
	case <-time.After(30 * time.Second):
		t.Fatal("the connector process did not come up")
	}
	return p
}

// logText is what the process logged so far.
func (p *connectorProc) logText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// exited records that the test waited for the process itself.
func (p *connectorProc) exited() {
	p.mu.Lock()
	p.waited = true
	p.mu.Unlock()
}

// tryDial opens and closes a TCP connection through the client.
func tryDial(client *wgtest.Peer, dst netip.AddrPort) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.DialContext(ctx, "tcp", dst.String())
	if err == nil {
		c.Close()
	}
	return err
}

func countingListener(t *testing.T, addr string) (netip.AddrPort, *atomic.Int64) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().(*net.TCPAddr).AddrPort(), &n
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, mode); err != nil {
		t.Fatal(err)
	}
}

// testLogger logs through t.Logf.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, nil))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// TestPolicyReloadFromConfigMap: a policy mounted from a Kubernetes
// ConfigMap is a symlink through ..data, which the kubelet swaps
// atomically for a new directory on a change; the connector takes the
// new policy within its poll.
func TestPolicyReloadFromConfigMap(t *testing.T) {
	netstacktest.CheckLeaks(t)
	dir := t.TempDir()
	mount := filepath.Join(dir, "policy")
	write := func(version, policy string) {
		vdir := filepath.Join(mount, version)
		if err := os.MkdirAll(vdir, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(vdir, "apps.json"), []byte(policy), 0o644)
		tmp := filepath.Join(mount, "..data_tmp")
		os.Remove(tmp)
		if err := os.Symlink(version, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(mount, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	write("..v1", `[{"name": "one", "connectors": ["*"], "routes": ["192.0.2.1/32"]}]`)
	if err := os.Symlink("..data/apps.json", filepath.Join(mount, "apps.json")); err != nil {
		t.Fatal(err)
	}
	var logs netstacktest.SyncBuffer
	log := slog.New(slog.NewTextHandler(io.MultiWriter(testWriter{t}, &logs), nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- runUp(ctx, upFlags{state: filepath.Join(dir, "state"), policy: filepath.Join(mount, "apps.json"),
			listen: netstacktest.ClosedPort(t, "udp", "127.0.0.1").String(), tags: "tag:connector"}, nil, io.Discard, log)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("up: %v", err)
		}
	}()
	netstacktest.WaitFor(t, func() bool { return strings.Contains(logs.String(), `msg=serving apps=1`) })
	write("..v2", `[{"name": "one", "connectors": ["*"], "routes": ["192.0.2.1/32"]},
		{"name": "two", "connectors": ["*"], "routes": ["192.0.2.2/32"]}]`)
	netstacktest.WaitFor(t, func() bool { return strings.Contains(logs.String(), `msg="policy reloaded"`) })
	if !strings.Contains(logs.String(), "apps=2") {
		t.Errorf("the reloaded policy does not have two apps:\n%s", logs.String())
	}
}
