package client_test

import (
	"encoding/hex"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/appconnector/appconnector/connector/wireguard/wgtest"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// TestUAPIShowsEveryConnector: the client's read-only UAPI socket lists
// each connector as a peer of one interface, and refuses changes.
func TestUAPIShowsEveryConnector(t *testing.T) {
	netstacktest.CheckLeaks(t)
	s := newSetup(t, 2, nil)
	path := filepath.Join(t.TempDir(), "client.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.client.ServeUAPI(ln) }()
	defer func() {
		ln.Close()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	get := wgtest.UAPIExchange(t, path, "get=1\n\n")
	if n := strings.Count(get, "private_key="); n != 1 {
		t.Errorf("%d interface sections, want 1:\n%s", n, get)
	}
	for _, tc := range s.connectors {
		pub := tc.key.PublicKey()
		if !strings.Contains(get, "public_key="+hex.EncodeToString(pub[:])+"\n") {
			t.Errorf("connector %s not listed:\n%s", pub, get)
		}
	}
	if !strings.HasSuffix(get, "errno=0\n") {
		t.Errorf("get did not end with errno=0:\n%s", get)
	}
	if set := wgtest.UAPIExchange(t, path, "set=1\nprivate_key="+strings.Repeat("00", 32)+"\n\n"); set != "errno=1\n" {
		t.Errorf("set: %q, want errno=1 (EPERM)", set)
	}
}
