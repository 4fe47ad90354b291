package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector/wireguard"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// fakeAdminEnv makes the test binary a fake admin API on the unix socket
// it names, as another user might plant one.
const fakeAdminEnv = "APPCONNECTOR_TEST_FAKE_ADMIN"

func init() {
	if sock := os.Getenv(fakeAdminEnv); sock != "" {
		ln, err := net.Listen("unix", sock)
		if err != nil {
			os.Exit(3)
		}
		os.Stdout.WriteString("listening\n")
		http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte(`{"routes": [{"prefix": "203.0.113.66/32", "app": "planted", "source": "learned", "state": "advertised"}]}`))
		}))
		os.Exit(0)
	}
}

// asNobody returns the command prefix that runs a program as uid/gid 65534,
// or skips the test where that is impossible.
func asNobody(t *testing.T) []string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run a second user")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv (util-linux) is not installed")
	}
	return []string{setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--"}
}

// sharedDir is a directory every user may enter, holding a copy of the
// test binary (bin) that every user may run.
func sharedDir(t *testing.T) (dir, bin string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "appconnector-shared-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin = filepath.Join(dir, "appconnector")
	copyFile(t, self, bin, 0o755)
	return dir, bin
}

// A state directory another user created, writable by all, with a planted
// connector.conf (a key its planter knows): the connector, running as
// nobody, refuses it and says why (issue 11, finding 6). So does one of
// its own that others may write.
func TestUnsafeStateDirRefused(t *testing.T) {
	nobody := asNobody(t)
	base, bin := sharedDir(t)

	planted := filepath.Join(base, "planted")
	os.Mkdir(planted, 0o777)
	os.Chmod(planted, 0o777) // root's, open to all
	key, _ := wireguard.GeneratePrivateKey()
	var conf bytes.Buffer
	(&wireguard.Config{Interface: wireguard.Interface{PrivateKey: key, ListenPort: 51899}}).WriteTo(&conf)
	os.WriteFile(filepath.Join(planted, "connector.conf"), conf.Bytes(), 0o644)

	own := filepath.Join(base, "own")
	os.Mkdir(own, 0o777)
	os.Chown(own, 65534, 65534)
	os.Chmod(own, 0o777)

	for _, tc := range []struct{ dir, want string }{
		{planted, "belongs to uid 0, not to this process (uid 65534)"},
		{own, "writable by group or others (mode 0777)"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		args := append(nobody, bin, "up", "--state", tc.dir, "--listen", "127.0.0.1:0")
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Env = append(os.Environ(), asMain)
		out, err := cmd.CombinedOutput()
		cancel()
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Fatalf("state %s: the connector did not fail (%v):\n%s", tc.dir, err, out)
		}
		if !strings.Contains(string(out), tc.want) || !strings.Contains(string(out), tc.dir) {
			t.Errorf("state %s: error does not say %q and name the directory:\n%s", tc.dir, tc.want, out)
		}
	}
}

// An admin socket served by another user (a fake moved into place) is
// refused by the CLI before any request (issue 11, finding 6).
func TestAdminSocketOfAnotherUserRefused(t *testing.T) {
	nobody := asNobody(t)
	base, bin := sharedDir(t)
	state := filepath.Join(base, "state")
	os.Mkdir(state, 0o777)
	os.Chmod(state, 0o777) // as in the finding: anyone may put a socket there
	sock := filepath.Join(state, "admin.sock")

	args := append(nobody, bin, "-test.run=^$")
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), fakeAdminEnv+"="+sock)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line := make([]byte, 10)
	if n, _ := stdout.Read(line); string(line[:n]) != "listening\n" {
		t.Fatalf("fake admin server did not start: %q", line[:n])
	}
	netstacktest.WaitFor(t, func() bool { _, err := os.Stat(sock); return err == nil })

	var out, errb bytes.Buffer
	code := run([]string{"routes", "--state", state}, nil, &out, &errb)
	if code == 0 || strings.Contains(out.String(), "203.0.113.66") {
		t.Fatalf("routes talked to the fake (exit %d):\n%s", code, out.String())
	}
	if !strings.Contains(errb.String(), "served by uid 65534") {
		t.Errorf("error does not name the socket's user: %s", errb.String())
	}
}
