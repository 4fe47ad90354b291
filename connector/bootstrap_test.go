package connector

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/appconnector/appconnector/connector/wireguard"
)

func TestStateCreateReuseAndPort(t *testing.T) {
	dir := t.TempDir()
	routes := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	st, err := LoadOrCreateState(StateOptions{Dir: dir, ListenPort: 40000, Routes: routes})
	if err != nil {
		t.Fatal(err)
	}
	if !st.Created || st.Config.Interface.ListenPort != 40000 {
		t.Fatalf("first run: created %v, port %d", st.Created, st.Config.Interface.ListenPort)
	}
	client := loadClient(t, st.ClientPath)
	if got := client.Peers[0].Endpoint; got != "127.0.0.1:40000" {
		t.Errorf("client endpoint %q", got)
	}
	if got := client.Peers[0].AllowedIPs; len(got) != 3 || got[2] != routes[0] {
		t.Errorf("client AllowedIPs %v: want the two tunnel addresses and the route", got)
	}
	if client.Peers[0].PublicKey != st.Config.Interface.PrivateKey.PublicKey() ||
		st.Config.Peers[0].PublicKey != client.Interface.PrivateKey.PublicKey() ||
		client.Peers[0].PresharedKey != st.Config.Peers[0].PresharedKey {
		t.Error("the two configs' keys do not pair up")
	}
	key := st.Config.Interface.PrivateKey

	// Second run, no port given: the stored one.
	st, err = LoadOrCreateState(StateOptions{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if st.Created || st.Config.Interface.PrivateKey != key || st.Config.Interface.ListenPort != 40000 {
		t.Fatalf("second run: created %v, same key %v, port %d", st.Created, st.Config.Interface.PrivateKey == key, st.Config.Interface.ListenPort)
	}
	if got := loadClient(t, st.ClientPath).Peers[0].AllowedIPs; len(got) != 2 {
		t.Errorf("routes removed, client AllowedIPs still %v", got)
	}

	// Another port and host for this run: the client follows.
	st, err = LoadOrCreateState(StateOptions{Dir: dir, ListenPort: 41000, EndpointHost: netip.MustParseAddr("192.0.2.9")})
	if err != nil {
		t.Fatal(err)
	}
	if st.Config.Interface.ListenPort != 41000 {
		t.Errorf("port %d, want 41000", st.Config.Interface.ListenPort)
	}
	if got := loadClient(t, st.ClientPath).Peers[0].Endpoint; got != "192.0.2.9:41000" {
		t.Errorf("client endpoint %q", got)
	}
	for _, name := range []string{ConnectorConfName, ClientConfName} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, err %v; want 0600", name, fi.Mode(), err)
		}
	}
}

func TestStateCorruptIsReportedNotReplaced(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadOrCreateState(StateOptions{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, ConnectorConfName)
	garbage := []byte("[Interface]\nPrivateKey = nope\n")
	os.WriteFile(path, garbage, 0o600)
	_, err := LoadOrCreateState(StateOptions{Dir: dir})
	if err == nil || !strings.Contains(err.Error(), ConnectorConfName+":2") {
		t.Fatalf("err = %v, want one naming %s line 2", err, ConnectorConfName)
	}
	if got, _ := os.ReadFile(path); string(got) != string(garbage) {
		t.Error("the corrupt file was replaced")
	}

	// A first run that stopped after client.conf: start over cleanly.
	dir2 := t.TempDir()
	os.WriteFile(filepath.Join(dir2, ClientConfName), []byte("half-written"), 0o600)
	st, err := LoadOrCreateState(StateOptions{Dir: dir2})
	if err != nil || !st.Created {
		t.Fatalf("after an interrupted first run: created %v, err %v", st != nil && st.Created, err)
	}
	loadClient(t, st.ClientPath)
}

func loadClient(t *testing.T, path string) *wireguard.Config {
	t.Helper()
	c, _, err := wireguard.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
