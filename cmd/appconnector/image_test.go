package main

import (
	"archive/tar"
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector/dnstest"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// TestContainerImage builds cmd/appconnector/deploy/Containerfile with
// podman, checks the image's user, entrypoint and volume, exports its
// root filesystem, and runs a connector and a client from it as uid 65534
// with no capabilities (chroot --userspec in a mount namespace of its
// own: podman run cannot set rlimits in this sandbox) for a round trip:
// a SOCKS5 connection through the client to an app name that only the
// connector's DNS upstream knows.
//
// With no container registry reachable, the build stage's Go image is
// made here from this machine's Go and busybox.
func TestContainerImage(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the image build takes a minute or more")
	}
	podman, err := exec.LookPath("podman")
	if err != nil {
		t.Skip("podman is not installed: skipping the container image test (.ci/run installs it)")
	}
	if os.Geteuid() != 0 {
		t.Skip("not root: chroot needs it")
	}
	for _, tool := range []string{"unshare", "chroot"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed: skipping the container image test", tool)
		}
	}
	busybox := "/bin/busybox"
	if _, err := os.Stat(busybox); err != nil {
		t.Skip("/bin/busybox is missing (Debian's busybox-static): the local build image needs a shell")
	}
	goroot := runtime.GOROOT()
	modcache := strings.TrimSpace(goEnv(t, "GOMODCACHE"))
	gocache := strings.TrimSpace(goEnv(t, "GOCACHE"))
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	tag := fmt.Sprintf("localhost/appconnector-test:%d", os.Getpid())
	goImage := fmt.Sprintf("localhost/appconnector-gobuild:%d", os.Getpid())
	t.Cleanup(func() { exec.Command(podman, "rmi", "-f", tag, goImage).Run() })

	// The build stage's image: busybox's shell, this machine's Go, CA
	// certificates.
	imp := exec.Command(podman, "import", "--change", "ENV PATH=/usr/local/go/bin:/bin",
		"--change", "ENV GOPATH=/go", "--change", "ENV HOME=/root", "-", goImage)
	stdin, err := imp.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var impOut strings.Builder
	imp.Stdout, imp.Stderr = &impOut, &impOut
	if err := imp.Start(); err != nil {
		t.Fatal(err)
	}
	werr := writeBuildRoot(stdin, busybox, goroot)
	stdin.Close()
	if err := imp.Wait(); err != nil || werr != nil {
		t.Fatalf("podman import: %v %v\n%s", err, werr, impOut.String())
	}

	// The image, from the repository's Containerfile, offline: modules
	// come from this machine's module cache.
	// --layers=false: no intermediate images are left behind.
	build := exec.Command(podman, "build", "--isolation=chroot", "--layers=false", "--build-arg", "GO_IMAGE="+goImage,
		"--build-arg", "GOPROXY=off", "--build-arg", "GOFLAGS=-mod=mod",
		"-v", modcache+":/go/pkg/mod", "-v", gocache+":/root/.cache/go-build",
		"-f", "cmd/appconnector/deploy/Containerfile", "-t", tag, ".")
	build.Dir = repo
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("podman build: %v\n%s", err, out)
	}
	out, err := exec.Command(podman, "image", "inspect", tag).Output()
	if err != nil {
		t.Fatal(err)
	}
	var inspect []struct {
		Size   int64
		Config struct {
			User       string
			Entrypoint []string
			Cmd        []string
			Volumes    map[string]struct{}
		}
	}
	if err := json.Unmarshal(out, &inspect); err != nil || len(inspect) != 1 {
		t.Fatalf("podman image inspect: %v\n%s", err, out)
	}
	cfg := inspect[0].Config
	if cfg.User != "65534:65534" || strings.Join(cfg.Entrypoint, " ") != "/appconnector" || strings.Join(cfg.Cmd, " ") != "up --state /state" {
		t.Errorf("image config: user %q, entrypoint %q, cmd %q", cfg.User, cfg.Entrypoint, cfg.Cmd)
	}
	if _, ok := cfg.Volumes["/state"]; !ok {
		t.Errorf("image volumes %v, want /state", cfg.Volumes)
	}
	t.Logf("image %s: %.1f MB", tag, float64(inspect[0].Size)/1e6)

	// Its root filesystem: the binary, CA certificates, /state for
	// nobody, and nothing else (no shell).
	root := t.TempDir()
	cid, err := exec.Command(podman, "create", tag).Output()
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(string(cid))
	defer exec.Command(podman, "rm", "-f", id).Run()
	exp := exec.Command("sh", "-c", podman+" export "+id+" | tar -C "+root+" -x")
	if out, err := exp.CombinedOutput(); err != nil {
		t.Fatalf("export: %v\n%s", err, out)
	}
	var files []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(root, p)
			files = append(files, rel)
		}
		return nil
	})
	if strings.Join(files, " ") != "appconnector etc/ssl/certs/ca-certificates.crt" {
		t.Errorf("root filesystem holds %v, want the binary and the CA certificates only", files)
	}
	if fi, err := os.Stat(filepath.Join(root, "state")); err != nil || !fi.IsDir() || fi.Sys().(*syscall.Stat_t).Uid != 65534 {
		t.Errorf("/state in the image: %v; want a directory of uid 65534", err)
	}

	// A connector and a client from it, as nobody.
	echo := netstacktest.TCPEcho(t, "127.0.0.1:0")
	upstream := dnstest.New(t, "app.example.com. 60 IN A 127.0.0.1")
	os.WriteFile(filepath.Join(root, "state", "policy.json"),
		// The binary counts loopback among the host's own addresses: only a
		// configured route naming exactly it lets flows reach it.
		[]byte(`[{"name": "app", "connectors": ["*"], "domains": ["app.example.com"], "routes": ["127.0.0.1/32"]}]`), 0o644)
	listen := netstacktest.ClosedPort(t, "udp", "127.0.0.1")
	connAdmin := netstacktest.ClosedPort(t, "tcp", "127.0.0.1")
	conn := startInRoot(t, root, "up", "--state", "/state", "--policy", "/state/policy.json", "--listen", listen.String(),
		"--dns-upstream", upstream.Addr, "--admin", connAdmin.String())
	netstacktest.WaitFor(t, func() bool { _, err := os.Stat(filepath.Join(root, "state", "client.conf")); return err == nil })
	socks := netstacktest.ClosedPort(t, "tcp", "127.0.0.1")
	clientAdmin := netstacktest.ClosedPort(t, "tcp", "127.0.0.1")
	cl := startInRoot(t, root, "client", "--config", "/state/client.conf", "--socks5", socks.String(),
		"--admin", clientAdmin.String(), "--host-dns", upstream.Addr)
	for _, p := range []*exec.Cmd{conn, cl} {
		checkUnprivileged(t, p.Process.Pid)
	}
	netstacktest.WaitFor(t, func() bool {
		resp, err := http.Get("http://" + clientAdmin.String() + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	c, err := socks5Dial(socks.String(), "app.example.com", echo.Port())
	if err != nil {
		t.Fatalf("through the image's client and connector: %v", err)
	}
	defer c.Close()
	netstacktest.EchoTCP(t, c, 4096)
	// The flow went through the connector, which learned the name.
	resp, err := http.Get("http://" + connAdmin.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`appconnector_flows_total{proto="tcp"} 1`, `appconnector_dns_queries_total{result="answered"} `} {
		if !strings.Contains(string(body), want) {
			t.Errorf("the connector's metrics lack %q", want)
		}
	}
}

// goEnv runs go env name.
func goEnv(t *testing.T, name string) string {
	t.Helper()
	out, err := exec.Command("go", "env", name).Output()
	if err != nil {
		t.Skipf("go env %s: %v", name, err)
	}
	return string(out)
}

// writeBuildRoot writes, as a tar stream, a root filesystem for the
// build stage: busybox as /bin/sh, the Go tree goroot as /usr/local/go,
// the CA certificates, and /tmp.
func writeBuildRoot(w io.Writer, busybox, goroot string) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	tw := tar.NewWriter(bw)
	dir := func(name string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: time.Now()})
	}
	file := func(name, src string) error {
		fi, err := os.Stat(src)
		if err != nil {
			return err
		}
		f, err := os.Open(src)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: int64(fi.Mode().Perm()), Size: fi.Size(), ModTime: fi.ModTime()}); err != nil {
			return err
		}
		_, err = io.Copy(tw, f)
		return err
	}
	for _, d := range []string{"bin", "etc", "etc/ssl", "etc/ssl/certs", "usr", "usr/local"} {
		if err := dir(d, 0o755); err != nil {
			return err
		}
	}
	if err := dir("tmp", 0o1777); err != nil {
		return err
	}
	if err := file("bin/busybox", busybox); err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/sh", Linkname: "busybox", Mode: 0o777}); err != nil {
		return err
	}
	if err := file("etc/ssl/certs/ca-certificates.crt", "/etc/ssl/certs/ca-certificates.crt"); err != nil {
		return err
	}
	err := filepath.WalkDir(goroot, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(goroot, p)
		name := filepath.ToSlash(filepath.Join("usr/local/go", rel))
		switch {
		case d.IsDir():
			return dir(name, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777})
		case d.Type().IsRegular():
			return file(name, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return bw.Flush()
}

// startInRoot runs /appconnector args from root as uid and gid 65534,
// in a mount namespace of its own; it is stopped at cleanup.
func startInRoot(t *testing.T, root string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("unshare", append([]string{"--mount", "--propagation", "private", "chroot", "--userspec=65534:65534", root, "/appconnector"}, args...)...)
	cmd.Stdout, cmd.Stderr = testWriter{t}, testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	return cmd
}

// checkUnprivileged checks that process pid (once it runs the binary)
// runs as 65534 with no capabilities.
func checkUnprivileged(t *testing.T, pid int) {
	t.Helper()
	var status string
	netstacktest.WaitFor(t, func() bool {
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		status = string(data)
		return err == nil && strings.HasSuffix(exe, "/appconnector")
	})
	for _, want := range []string{"Uid:\t65534\t65534\t65534\t65534", "Gid:\t65534\t65534\t65534\t65534", "CapEff:\t0000000000000000", "CapPrm:\t0000000000000000"} {
		if !strings.Contains(status, want) {
			t.Errorf("process %d: status lacks %q:\n%s", pid, want, status)
		}
	}
}

// socks5Dial opens a connection to host:port through the SOCKS5 proxy at
// proxy (no authentication, the name resolved by the proxy).
func socks5Dial(proxy, host string, port uint16) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", proxy, 10*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	req := append([]byte{5, 1, 0, 5, 1, 0, 3, byte(len(host))}, host...)
	req = binary.BigEndian.AppendUint16(req, port)
	if _, err := c.Write(req); err != nil {
		c.Close()
		return nil, err
	}
	var resp [2 + 10]byte // method choice, then a reply with an IPv4 BND
	if _, err := io.ReadFull(c, resp[:]); err != nil {
		c.Close()
		return nil, err
	}
	if resp[1] != 0 || resp[3] != 0 {
		c.Close()
		return nil, fmt.Errorf("socks5: method %#x, reply %#x", resp[1], resp[3])
	}
	c.SetDeadline(time.Time{})
	return c, nil
}
