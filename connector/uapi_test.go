package connector_test

import (
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector/wireguard/wgtest"
	"github.com/appconnector/appconnector/netstack"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// TestUAPIReadOnly: the UAPI socket reports the device as wireguard-go
// does (the peer, its handshake and traffic), refuses changes, and
// `wg show` reads it where wireguard-tools is installed.
func TestUAPIReadOnly(t *testing.T) {
	netstacktest.CheckLeaks(t)
	e := newEnv(t, netstack.Config{})
	echo := netstacktest.TCPEcho(t, "127.0.0.1:0")
	c, err := e.client.DialContext(ctxTimeout(t, 10*time.Second), "tcp", echo.String())
	if err != nil {
		t.Fatal(err)
	}
	netstacktest.EchoTCP(t, c, 4096)
	c.Close()

	path := filepath.Join(t.TempDir(), "wg.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.conn.ServeUAPI(ln) }()
	defer func() {
		ln.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Error(err)
			}
		case <-time.After(5 * time.Second):
			t.Error("ServeUAPI still waiting for an idle client 5 s after its listener closed")
		}
	}()

	// An idle client does not hold up the server's end.
	idle, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { idle.Close() }) // after the server is stopped below

	keyHex := hex.EncodeToString(e.clientPub[:])
	get := wgtest.UAPIExchange(t, path, "get=1\n\n")
	for _, want := range []string{"public_key=" + keyHex + "\n", "last_handshake_time_sec=", "rx_bytes=", "errno=0\n"} {
		if !strings.Contains(get, want) {
			t.Errorf("get: no %q in\n%s", want, get)
		}
	}
	if strings.Contains(get, "last_handshake_time_sec=0\n") {
		t.Error("get: no handshake reported after traffic")
	}
	if set := wgtest.UAPIExchange(t, path, "set=1\nlisten_port=1\n\n"); set != "errno=1\n" {
		t.Errorf("set: %q, want errno=1 (EPERM)", set)
	}
	if again := wgtest.UAPIExchange(t, path, "get=1\n\n"); !strings.Contains(again, "listen_port="+fmt.Sprint(e.conn.Port())+"\n") {
		t.Errorf("the refused set changed the port, or get broke:\n%s", again)
	}

	// wg show, if wireguard-tools is here and its socket directory is ours.
	wg, err := exec.LookPath("wg")
	if err != nil {
		t.Log("wg not installed: skipping `wg show`")
		return
	}
	if err := os.MkdirAll("/var/run/wireguard", 0o755); err != nil {
		t.Logf("cannot create /var/run/wireguard (%v): skipping `wg show`", err)
		return
	}
	name := fmt.Sprintf("actest%d", rand.IntN(1e6))
	sock := filepath.Join("/var/run/wireguard", name+".sock")
	ln2, err := net.Listen("unix", sock)
	if err != nil {
		t.Logf("cannot listen on %s (%v): skipping `wg show`", sock, err)
		return
	}
	defer os.Remove(sock)
	done2 := make(chan error, 1)
	go func() { done2 <- e.conn.ServeUAPI(ln2) }()
	defer func() { ln2.Close(); <-done2 }()
	out, err := exec.Command(wg, "show", name).CombinedOutput()
	if err != nil {
		t.Fatalf("wg show %s: %v\n%s", name, err, out)
	}
	if !strings.Contains(string(out), "peer: "+e.clientKey()) || !strings.Contains(string(out), "latest handshake") {
		t.Errorf("wg show %s:\n%s", name, out)
	}
}
