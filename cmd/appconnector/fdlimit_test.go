package main

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector/wireguard"
	"github.com/appconnector/appconnector/connector/wireguard/wgtest"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// Under a descriptor limit of 1,024, one peer opening 1,100 UDP flows
// must not take the descriptors every other peer and the admin API need
// (issue 11, finding 7: under 4,096 one peer's 4,200 flows did). The
// binary derives its flow caps from the limit and says so; the peer gets
// its share, another peer's flow and the admin API still work.
func TestDescriptorLimitKeepsOthersServed(t *testing.T) {
	netstacktest.CheckLeaks(t)
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("prlimit (util-linux) is not installed")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "appconnector")
	copyFile(t, self, bin, 0o755)

	serverKey, _ := wireguard.GeneratePrivateKey()
	keyA, _ := wireguard.GeneratePrivateKey()
	keyB, _ := wireguard.GeneratePrivateKey()
	addrA, addrB := netip.MustParsePrefix("10.97.0.2/32"), netip.MustParsePrefix("10.97.0.3/32")
	conf := &wireguard.Config{
		Interface: wireguard.Interface{PrivateKey: serverKey, Addresses: []netip.Prefix{netip.MustParsePrefix("10.97.0.1/24")}},
		Peers: []wireguard.Peer{
			{PublicKey: keyA.PublicKey(), AllowedIPs: []netip.Prefix{addrA}},
			{PublicKey: keyB.PublicKey(), AllowedIPs: []netip.Prefix{addrB}},
		},
	}
	var cb bytes.Buffer
	conf.WriteTo(&cb)
	os.WriteFile(filepath.Join(dir, "wg0.conf"), cb.Bytes(), 0o600)
	os.WriteFile(filepath.Join(dir, "policy.json"), []byte(`[{"name": "lo", "connectors": ["*"], "routes": ["127.0.0.1/32"]}]`), 0o600)
	state := filepath.Join(dir, "state")

	proc := startConnectorProc(t, []string{prlimit, "--nofile=1024:1024", "--", bin, "up", "--config", filepath.Join(dir, "wg0.conf"),
		"--policy", filepath.Join(dir, "policy.json"), "--state", state, "--listen", "127.0.0.1:0"})
	port := proc.port
	// 1,024 less the reserve (640 and a sixteenth): 320 flows, 80 a peer.
	caps := proc.logText()
	if !strings.Contains(caps, "flow caps from the descriptor limit") || !strings.Contains(caps, "nofile=1024 flows=320 flows_per_peer=80") {
		t.Fatalf("no log line with the caps derived from the limit:\n%s", caps)
	}

	peer := func(key wireguard.Key, addr netip.Prefix) *wgtest.Peer {
		p, err := wgtest.New(wgtest.Config{
			PrivateKey: key,
			Addresses:  []netip.Prefix{addr},
			Remotes: []wireguard.Peer{{
				PublicKey:  serverKey.PublicKey(),
				Endpoint:   netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String(),
				AllowedIPs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")},
			}},
		})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	a := peer(keyA, addrA)
	defer a.Close()
	b := peer(keyB, addrB)
	defer b.Close()

	// A opens 1,100 UDP flows and keeps them: all datagrams first, then
	// the echoes, within one deadline.
	srv := netstacktest.UDPEcho(t, "127.0.0.1:0")
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 1100 {
		c, err := a.DialContext(context.Background(), "udp", srv.Addr.String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		c.Write([]byte("x"))
	}
	deadline := time.Now().Add(5 * time.Second)
	served := 0
	for _, c := range conns {
		c.SetReadDeadline(deadline)
		if _, err := c.Read(make([]byte, 8)); err == nil {
			served++
		}
	}
	if served != 80 {
		t.Errorf("peer A: %d of 1,100 UDP flows served, want 80 (its cap)", served)
	}
	// B and the admin API are still served.
	echo(t, b, netstacktest.TCPEcho(t, "127.0.0.1:0"), 64<<10)
	var out, errb bytes.Buffer
	if code := run([]string{"routes", "--state", state}, nil, &out, &errb); code != 0 || !strings.Contains(out.String(), "127.0.0.1/32") {
		t.Errorf("admin API with peer A at its cap: exit %d: %s%s", code, out.String(), errb.String())
	}
}
