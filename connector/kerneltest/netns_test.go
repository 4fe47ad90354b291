package kerneltest

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
)

// nsPrefix starts the name of every namespace the tier makes:
// ackt-<pid of the test binary>-<rig number>-<role>. The pid tells a
// leftover of an aborted run from one of a run still going.
const nsPrefix = "ackt-"

// wgSockDir is where wireguard-go puts its UAPI sockets. It is not per
// namespace, so the tier's interface names are unique per run:
// ak<pid>x<rig number><role>.
const wgSockDir = "/var/run/wireguard"

var rigSeq atomic.Int32

// rigNames are the names of one rig's namespaces and wireguard-go
// interfaces.
type rigNames struct {
	cli, gw, up         string // namespaces
	ifConn, ifRef, ifGw string // client→connector, client→reference, reference gateway
}

func newRigNames() rigNames {
	pid, n := os.Getpid(), rigSeq.Add(1)
	ns := func(role string) string { return fmt.Sprintf("%s%d-%d-%s", nsPrefix, pid, n, role) }
	ifc := func(role byte) string { return fmt.Sprintf("ak%dx%d%c", pid, n, role) }
	return rigNames{cli: ns("cli"), gw: ns("gw"), up: ns("up"), ifConn: ifc('c'), ifRef: ifc('r'), ifGw: ifc('g')}
}

// nsExec is args run inside namespace ns.
func nsExec(ns string, args ...string) []string {
	return append([]string{"ip", "netns", "exec", ns}, args...)
}

// addNetns makes namespace name with loopback up; a cleanup of t kills
// whatever still runs in it and deletes it.
func addNetns(t *testing.T, name string) error {
	if _, err := run("ip", "netns", "add", name); err != nil {
		return err
	}
	t.Cleanup(func() {
		if err := delNetns(name); err != nil {
			t.Errorf("remove namespace: %v", err)
		}
	})
	_, err := run("ip", "-n", name, "link", "set", "lo", "up")
	return err
}

// delNetns kills every process in namespace name and deletes it.
func delNetns(name string) error {
	out, err := run("ip", "netns", "pids", name)
	if err != nil {
		return err
	}
	for _, f := range strings.Fields(out) {
		if pid, err := strconv.Atoi(f); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	_, err = run("ip", "netns", "del", name)
	return err
}

// removeStale deletes the namespaces and wireguard-go sockets of earlier
// runs of the tier whose test binary is gone.
func removeStale(t *testing.T) {
	out, err := run("ip", "netns", "list")
	if err != nil {
		t.Logf("list namespaces: %v", err)
		return
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], nsPrefix) {
			continue
		}
		pid, ok := stalePid(strings.SplitN(strings.TrimPrefix(f[0], nsPrefix), "-", 2)[0])
		if !ok {
			continue
		}
		if err := delNetns(f[0]); err != nil {
			t.Logf("remove stale namespace of pid %d: %v", pid, err)
		} else {
			t.Logf("removed stale namespace %s", f[0])
		}
	}
	socks, _ := filepath.Glob(filepath.Join(wgSockDir, "ak*x*.sock"))
	for _, s := range socks {
		if _, ok := stalePid(strings.SplitN(strings.TrimPrefix(filepath.Base(s), "ak"), "x", 2)[0]); ok {
			os.Remove(s)
		}
	}
}

// stalePid parses the pid in a name and reports whether it is no longer
// a test binary of this tier.
func stalePid(s string) (int, bool) {
	pid, err := strconv.Atoi(s)
	if err != nil || pid <= 0 || pid == os.Getpid() {
		return pid, false
	}
	self, _ := os.ReadFile("/proc/self/comm")
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return pid, err != nil || string(comm) != string(self)
}
