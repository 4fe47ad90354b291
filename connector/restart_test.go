package connector_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/apptype"
	"github.com/appconnector/appconnector/connector/wireguard"
	"github.com/appconnector/appconnector/connector/wireguard/wgtest"
	"github.com/appconnector/appconnector/netstack"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// The restart tests use stock WireGuard clients: wgtest peers, a
// wireguard-go device with its default timers on a UDP socket on
// 127.0.0.1, no persistent keepalive, nothing that probes or resets a
// session. Such a client keeps sending on its session after the connector
// restarts until its own timers give up on it (about 15 s); only the
// connector can bring it back sooner.

// recoveryBound is how long a stock client may take, after a restarted
// connector listens again, to open a connection through it. Without the
// connector's help it takes ~15 s; with it, one round trip (plus one SYN
// retransmission, 1 s, if the client's first SYN went out on the old
// session just before the new handshake finished).
const recoveryBound = 2 * time.Second

// restartRig runs connectors, one after the other, on the same UDP port
// and state directory with the same key.
type restartRig struct {
	t      *testing.T
	state  string
	key    wireguard.Key
	port   uint16 // 0 until the first connector picked one
	policy *apptype.Policy
	dialer *netstacktest.Dialer
}

// rigClient is a stock client of the rig's connectors.
type rigClient struct {
	key  wireguard.Key
	addr netip.Prefix
	*wgtest.Peer
}

func newRestartRig(t *testing.T) *restartRig {
	t.Helper()
	key, err := wireguard.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	policy, err := apptype.ParsePolicy("test-policy.json", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	return &restartRig{t: t, state: t.TempDir(), key: key, policy: policy, dialer: &netstacktest.Dialer{}}
}

// newClient makes a client key with tunnel address 10.99.0.<n>; the
// client itself starts with startClient, once a connector has a port.
func (r *restartRig) newClient(n byte) *rigClient {
	r.t.Helper()
	k, err := wireguard.GeneratePrivateKey()
	if err != nil {
		r.t.Fatal(err)
	}
	return &rigClient{key: k, addr: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 99, 0, n}), 32)}
}

// start starts a connector whose peers are clients.
func (r *restartRig) start(log *slog.Logger, clients ...*rigClient) *connector.Connector {
	r.t.Helper()
	wg := &wireguard.Config{Interface: wireguard.Interface{PrivateKey: r.key, Addresses: []netip.Prefix{connV4}, ListenPort: r.port}}
	for _, c := range clients {
		wg.Peers = append(wg.Peers, wireguard.Peer{PublicKey: c.key.PublicKey(), AllowedIPs: []netip.Prefix{c.addr}})
	}
	c, err := connector.New(connector.Config{
		WireGuard:  wg,
		ListenAddr: netip.MustParseAddr("127.0.0.1"),
		Policy:     r.policy,
		StateDir:   r.state,
		Netstack:   netstack.Config{Dial: r.dialer.DialContext},
		Logger:     log,
	})
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { c.Close() })
	r.port = c.Port()
	return c
}

// startClient starts c's WireGuard device, peered with the connector.
func (r *restartRig) startClient(c *rigClient) {
	r.t.Helper()
	p, err := wgtest.New(wgtest.Config{
		PrivateKey: c.key,
		Addresses:  []netip.Prefix{c.addr},
		Remotes: []wireguard.Peer{{
			PublicKey:  r.key.PublicKey(),
			Endpoint:   netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), r.port).String(),
			AllowedIPs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")},
		}},
		Logf: r.t.Logf,
	})
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { p.Close() })
	c.Peer = p
}

// lastHandshake is when c last completed a handshake with the connector.
func (r *restartRig) lastHandshake(c *rigClient) time.Time {
	r.t.Helper()
	at, err := c.LastHandshake(r.key.PublicKey())
	if err != nil {
		r.t.Fatal(err)
	}
	return at
}

// storedEndpoints reads the connector's endpoints file: base64 public key
// to "ip:port".
func (r *restartRig) storedEndpoints() map[string]string {
	r.t.Helper()
	eps, err := r.readEndpoints()
	if err != nil {
		r.t.Fatal(err)
	}
	return eps
}

// readEndpoints is storedEndpoints with an error for a missing file.
func (r *restartRig) readEndpoints() (map[string]string, error) {
	data, err := os.ReadFile(filepath.Join(r.state, "endpoints.json"))
	if err != nil {
		return nil, err
	}
	var f struct {
		Peers []struct {
			PublicKey string `json:"publicKey"`
			Endpoint  string `json:"endpoint"`
		} `json:"peers"`
	}
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("endpoints.json: %w\n%s", err, data)
	}
	out := map[string]string{}
	for _, p := range f.Peers {
		out[p.PublicKey] = p.Endpoint
	}
	return out, nil
}

// openFlow opens a TCP connection from c to echo through the connector and
// checks that it carries data. The caller closes it.
func openFlow(t *testing.T, c *rigClient, echo netip.AddrPort) net.Conn {
	t.Helper()
	conn, err := c.DialContext(ctxTimeout(t, 10*time.Second), "tcp", echo.String())
	if err != nil {
		t.Fatalf("%v: dial %v: %v", c.addr, echo, err)
	}
	pingPong(t, conn, 4<<10)
	return conn
}

// firstConnection checks that c is back within recoveryBound of the
// restarted connector listening (when its New returned): that c has a new
// session, then that its first connection to echo goes through and
// carries data. before is c's last handshake before the restart.
//
// It waits for the session before it dials: a SYN sent in the moment
// before the handshake completes goes out on the dead session and costs
// the client's stack a 1 s retransmission, for this one connection only.
func (r *restartRig) firstConnection(c *rigClient, echo netip.AddrPort, listening, before time.Time) {
	t := r.t
	t.Helper()
	deadline := listening.Add(recoveryBound)
	var at time.Time
	for at = r.lastHandshake(c); !at.After(before); at = r.lastHandshake(c) {
		if time.Now().After(deadline) {
			t.Fatalf("%v: no new session within %v of the connector listening again (the client waits for its rekey timeout)", c.addr, recoveryBound)
		}
		time.Sleep(5 * time.Millisecond)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	conn, err := c.DialContext(ctx, "tcp", echo.String())
	if err != nil {
		t.Fatalf("%v: first connection after the restart, within %v of the connector listening again: %v", c.addr, recoveryBound, err)
	}
	took := time.Since(listening)
	defer conn.Close()
	netstacktest.EchoTCP(t, conn, 4<<10)
	t.Logf("%v: new session %v and first connection %v after the connector listened again", c.addr, at.Sub(listening), took)
}

// TestRestartStockClientBackAtOnce: a stock client with a session and an
// open flow through a connector that restarts opens its next connection
// through the new connector without waiting out its own timers, because
// the new connector initiates a handshake to where the client was.
func TestRestartStockClientBackAtOnce(t *testing.T) {
	netstacktest.CheckLeaks(t)
	echo := netstacktest.TCPEcho(t, "127.0.0.1:0")
	r := newRestartRig(t)
	a := r.newClient(2)
	c1 := r.start(slog.New(&logCounter{}), a)
	r.startClient(a)
	old := openFlow(t, a, echo)
	defer old.Close()
	before := r.lastHandshake(a)

	// Saved while the connector runs (a crash would not lose it), and
	// again on Close.
	key, want := a.key.PublicKey().String(), netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), a.Port).String()
	netstacktest.WaitFor(t, func() bool { eps, _ := r.readEndpoints(); return eps[key] == want })
	if err := c1.Close(); err != nil {
		t.Fatal(err)
	}
	if got := r.storedEndpoints()[key]; got != want {
		t.Fatalf("stored endpoint of the client %q, want %q", got, want)
	}

	r.start(slog.New(&logCounter{}), a)
	r.firstConnection(a, echo, time.Now(), before)
}

// TestRestartForgetsRemovedPeer: a peer dropped from the config between
// runs gets no handshake from the new connector, and its endpoint leaves
// the file; the peer that stayed is back at once.
func TestRestartForgetsRemovedPeer(t *testing.T) {
	netstacktest.CheckLeaks(t)
	echo := netstacktest.TCPEcho(t, "127.0.0.1:0")
	r := newRestartRig(t)
	a, b := r.newClient(2), r.newClient(3)
	c1 := r.start(slog.New(&logCounter{}), a, b)
	r.startClient(a)
	r.startClient(b)
	openFlow(t, a, echo).Close()
	openFlow(t, b, echo).Close()
	c1.Close()
	if n := len(r.storedEndpoints()); n != 2 {
		t.Fatalf("%d endpoints stored, want 2: %v", n, r.storedEndpoints())
	}
	aBefore, bBefore := r.lastHandshake(a), r.lastHandshake(b)

	c2 := r.start(slog.New(&logCounter{}), a)
	r.firstConnection(a, echo, time.Now(), aBefore)
	// The connector's handshakes all went out before New returned, so
	// one to b would have been answered by now.
	if at := r.lastHandshake(b); !at.Equal(bBefore) {
		t.Errorf("the removed peer had a handshake at %v (before the restart: %v)", at, bBefore)
	}
	// Dropped while the connector runs, and not written back on Close.
	netstacktest.WaitFor(t, func() bool { eps, _ := r.readEndpoints(); return len(eps) == 1 })
	c2.Close()
	stored := r.storedEndpoints()
	if _, ok := stored[b.key.PublicKey().String()]; ok || len(stored) != 1 {
		t.Errorf("endpoints after the run without the removed peer: %v, want only %v", stored, a.key.PublicKey())
	}
}

// TestRestartCorruptEndpointsFile: an endpoints file that does not parse
// is reported and moved aside, not emptied; the connector starts and
// serves, and writes a good file.
func TestRestartCorruptEndpointsFile(t *testing.T) {
	netstacktest.CheckLeaks(t)
	echo := netstacktest.TCPEcho(t, "127.0.0.1:0")
	r := newRestartRig(t)
	path := filepath.Join(r.state, "endpoints.json")
	const junk = `{"version": 1, "peers": [{"publicKey": "not a key"`
	if err := os.WriteFile(path, []byte(junk), 0o600); err != nil {
		t.Fatal(err)
	}
	a := r.newClient(2)
	logs := &logCounter{}
	c := r.start(slog.New(logs), a)
	if n := logs.count(path + " is corrupt"); n != 1 {
		t.Errorf("corrupt endpoints file reported %d times, want once: %q", n, logs.all())
	}
	aside, _ := filepath.Glob(path + ".corrupt-*")
	if len(aside) != 1 {
		t.Fatalf("corrupt file moved aside to %v, want one file", aside)
	}
	if data, err := os.ReadFile(aside[0]); err != nil || string(data) != junk {
		t.Errorf("the file moved aside holds %q (%v), want the corrupt contents", data, err)
	}
	if n := logs.count(aside[0]); n != 1 {
		t.Errorf("the report does not say where the file went (%s): %q", aside[0], logs.all())
	}
	r.startClient(a)
	openFlow(t, a, echo).Close()
	c.Close()
	if got := r.storedEndpoints(); len(got) != 1 {
		t.Errorf("endpoints after a run: %v, want the client's", got)
	}
}

// all returns the messages logged so far.
func (l *logCounter) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.msgs...)
}
