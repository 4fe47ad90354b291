package wireguard

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/appconnector/appconnector/netstack/netstacktest"
	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// fakeResolver answers from a table and counts lookups.
type fakeResolver struct {
	answers map[string][]netip.Addr
	calls   map[string]int
}

func newFakeResolver() *fakeResolver {
	return &fakeResolver{
		answers: map[string][]netip.Addr{
			"vpn.example.com":    {netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.11")},
			"v6only.example.com": {netip.MustParseAddr("2001:db8::2"), netip.MustParseAddr("2001:db8::3")},
			"mapped.example.com": {netip.MustParseAddr("::ffff:192.0.2.12")},
			"empty.example.com":  {},
		},
		calls: make(map[string]int),
	}
}

func (r *fakeResolver) lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	r.calls[host]++
	if _, ok := ctx.Deadline(); !ok {
		return nil, errors.New("lookup without a deadline")
	}
	addrs, ok := r.answers[host]
	if !ok {
		return nil, fmt.Errorf("lookup %s: no such host", host)
	}
	return addrs, nil
}

func TestUAPI(t *testing.T) {
	r := newFakeResolver()
	got, err := realisticWant.UAPI(context.Background(), r.lookup)
	if err != nil {
		t.Fatal(err)
	}
	want := "private_key=" + rfc7748Pairs[0].privHex + "\n" +
		"listen_port=51820\n" +
		"replace_peers=true\n" +
		"public_key=" + rfc7748Pairs[1].pubHex + "\n" +
		"preshared_key=" + testPSK.Hex() + "\n" +
		"replace_allowed_ips=true\n" +
		"allowed_ip=10.8.0.2/32\n" +
		"allowed_ip=fd00:8::2/128\n" +
		"allowed_ip=192.168.50.0/24\n" +
		"endpoint=192.0.2.10:51820\n" +
		"persistent_keepalive_interval=25\n" +
		"public_key=" + carolPub.Hex() + "\n" +
		"replace_allowed_ips=true\n" +
		"allowed_ip=10.8.0.3/32\n" +
		"endpoint=[2001:db8::7]:51821\n"
	if got != want {
		t.Errorf("UAPI =\n%s\nwant\n%s", got, want)
	}
}

func TestUAPIEndpoints(t *testing.T) {
	tests := []struct {
		endpoint string
		want     string // endpoint= value, or error substring if wantErr
		wantErr  bool
	}{
		{"192.0.2.1:51820", "192.0.2.1:51820", false},
		{"[2001:db8::9]:1", "[2001:db8::9]:1", false},
		{"[fe80::1%eth0]:51820", "[fe80::1%eth0]:51820", false},
		{"vpn.example.com:443", "192.0.2.10:443", false},
		{"v6only.example.com:443", "[2001:db8::2]:443", false},
		{"mapped.example.com:443", "192.0.2.12:443", false},
		{"empty.example.com:443", "peer 1 (" + bobPub.String() + "): endpoint empty.example.com:443: resolve empty.example.com: no IP addresses", true},
		{"nxdomain.example.com:443", "endpoint nxdomain.example.com:443: resolve nxdomain.example.com: lookup nxdomain.example.com: no such host", true},
	}
	for _, tc := range tests {
		t.Run(tc.endpoint, func(t *testing.T) {
			cfg := &Config{Interface: Interface{PrivateKey: alicePriv}, Peers: []Peer{{PublicKey: bobPub, Endpoint: tc.endpoint}}}
			got, err := cfg.UAPI(context.Background(), newFakeResolver().lookup)
			if tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("UAPI = %v, want error containing %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(got, "\nendpoint="+tc.want+"\n") {
				t.Errorf("UAPI =\n%s\nwant endpoint=%s", got, tc.want)
			}
		})
	}
}

func TestUAPIResolvesEachNameOnce(t *testing.T) {
	cfg := &Config{Interface: Interface{PrivateKey: alicePriv}, Peers: []Peer{
		{PublicKey: bobPub, Endpoint: "vpn.example.com:1"},
		{PublicKey: carolPub, Endpoint: "vpn.example.com:2"},
	}}
	r := newFakeResolver()
	got, err := cfg.UAPI(context.Background(), r.lookup)
	if err != nil {
		t.Fatal(err)
	}
	if r.calls["vpn.example.com"] != 1 {
		t.Errorf("vpn.example.com looked up %d times, want 1", r.calls["vpn.example.com"])
	}
	if !strings.Contains(got, "endpoint=192.0.2.10:1\n") || !strings.Contains(got, "endpoint=192.0.2.10:2\n") {
		t.Errorf("UAPI =\n%s", got)
	}
}

func TestUAPINilLookupWithIPLiterals(t *testing.T) {
	// Only IP literals, so the default resolver is never asked.
	cfg := &Config{Interface: Interface{PrivateKey: alicePriv}, Peers: []Peer{{PublicKey: bobPub, Endpoint: "127.0.0.1:9"}}}
	got, err := cfg.UAPI(context.Background(), nil)
	if err != nil || !strings.Contains(got, "endpoint=127.0.0.1:9\n") {
		t.Errorf("UAPI = %q, %v", got, err)
	}
}

// TestUAPIWireGuardDevice feeds UAPI output to a real wireguard-go device
// on in-memory TUN and bind fakes and reads the state back.
func TestUAPIWireGuardDevice(t *testing.T) {
	netstacktest.CheckLeaks(t)

	text, err := realisticWant.UAPI(context.Background(), newFakeResolver().lookup)
	if err != nil {
		t.Fatal(err)
	}
	// The device comes up at once and starts handshakes for the keepalive
	// peers; the fake bind rejects their endpoints, which it logs. Expected.
	logger := &device.Logger{Verbosef: device.DiscardLogf, Errorf: t.Logf}
	dev := device.NewDevice(tuntest.NewChannelTUN().TUN(), bindtest.NewChannelBinds()[0], logger)
	defer dev.Close()

	// Applying twice must give the same state: the text replaces, not adds.
	for range 2 {
		if err := dev.IpcSet(text); err != nil {
			t.Fatalf("IpcSet: %v\n%s", err, text)
		}
	}
	state, err := dev.IpcGet()
	if err != nil {
		t.Fatal(err)
	}
	iface, peers := parseIpcGet(state)
	// The device stores the private key clamped. (listen_port is whatever
	// the fake bind reports, so it is not checked.)
	clamped := alicePriv
	clamped[0] &= 248
	clamped[31] = clamped[31]&127 | 64
	if iface["private_key"] != clamped.Hex() {
		t.Errorf("device private_key = %s, want %s", iface["private_key"], clamped.Hex())
	}
	if len(peers) != len(realisticWant.Peers) {
		t.Fatalf("device has %d peers, want %d:\n%s", len(peers), len(realisticWant.Peers), state)
	}
	for _, p := range realisticWant.Peers {
		got, ok := peers[p.PublicKey.Hex()]
		if !ok {
			t.Errorf("peer %v missing:\n%s", p.PublicKey, state)
			continue
		}
		if got["preshared_key"][0] != p.PresharedKey.Hex() {
			t.Errorf("peer %v preshared_key = %v", p.PublicKey, got["preshared_key"])
		}
		if want := fmt.Sprint(p.PersistentKeepalive); got["persistent_keepalive_interval"][0] != want {
			t.Errorf("peer %v keepalive = %v, want %s", p.PublicKey, got["persistent_keepalive_interval"], want)
		}
		if len(got["endpoint"]) != 1 {
			t.Errorf("peer %v endpoint = %v", p.PublicKey, got["endpoint"])
		}
		allowed := make(map[string]bool)
		for _, a := range got["allowed_ip"] {
			allowed[a] = true
		}
		if len(allowed) != len(p.AllowedIPs) {
			t.Errorf("peer %v allowed_ip = %v, want %v", p.PublicKey, got["allowed_ip"], p.AllowedIPs)
		}
		for _, a := range p.AllowedIPs {
			if !allowed[a.String()] {
				t.Errorf("peer %v lacks allowed_ip %v: %v", p.PublicKey, a, got["allowed_ip"])
			}
		}
	}
}

// parseIpcGet splits IpcGet output into interface keys and per-peer values,
// the peers keyed by public key.
func parseIpcGet(s string) (iface map[string]string, peers map[string]map[string][]string) {
	iface, peers = make(map[string]string), make(map[string]map[string][]string)
	var cur map[string][]string
	for line := range strings.Lines(s) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), "=")
		switch {
		case k == "public_key":
			cur = make(map[string][]string)
			peers[v] = cur
		case cur != nil:
			cur[k] = append(cur[k], v)
		case k != "":
			iface[k] = v
		}
	}
	return iface, peers
}
