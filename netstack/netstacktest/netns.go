package netstacktest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// netnsEnv marks a test process started by InNetns; its value is the name
// of the test to run inside.
const netnsEnv = "APPCONNECTOR_TEST_NETNS"

// InNetns runs the calling top-level test again in a child process of the
// test binary, inside a new network namespace with loopback up. If ping
// is set, the namespace's net.ipv4.ping_group_range (a per-namespace
// sysctl that governs ICMPv6 ping sockets too) admits the process's group,
// so it may open unprivileged ICMP sockets; otherwise it keeps a new
// namespace's default, "1 0", which admits no group.
//
// In the child it reports true and the test goes on there. In the parent
// it reports false after the child has ended, having logged the child's
// output and failed or skipped the test as the child did; the test has
// nothing left to do. Where no namespace can be made (not root, and no
// unprivileged user namespaces), it skips the test.
func InNetns(t *testing.T, ping bool) bool {
	t.Helper()
	if os.Getenv(netnsEnv) == t.Name() {
		if err := setUpNetns(ping); err != nil {
			t.Fatalf("inside the test's network namespace: %v", err)
		}
		return true
	}
	attr := &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	if os.Geteuid() != 0 {
		// Root of a new user namespace may configure a network
		// namespace it owns.
		attr.Cloneflags |= syscall.CLONE_NEWUSER
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Geteuid(), Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getegid(), Size: 1}}
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+regexp.QuoteMeta(t.Name())+"$", "-test.v", "-test.count=1", "-test.timeout=3m")
	cmd.Env = append(os.Environ(), netnsEnv+"="+t.Name())
	cmd.SysProcAttr = attr
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Skipf("skipped: cannot start the test in a new network namespace (needs root or unprivileged user namespaces): %v", err)
	}
	t.Logf("in a new network namespace (ICMP sockets allowed: %v):\n%s", ping, out)
	switch {
	case err != nil:
		t.Fatalf("the test failed in its network namespace: %v", err)
	case strings.Contains(string(out), "--- SKIP: "+t.Name()):
		t.Skip("skipped in its network namespace (see above)")
	case !strings.Contains(string(out), "--- PASS: "+t.Name()):
		t.Fatal("the test did not run in its network namespace")
	}
	return false
}

// setUpNetns brings loopback up and sets ping_group_range in the network
// namespace this process runs in.
func setUpNetns(ping bool) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo: get flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo: up: %w", err)
	}
	if ping {
		// Only the process's own group: in a user namespace, the
		// only one mapped.
		g := os.Getegid()
		if err := os.WriteFile("/proc/sys/net/ipv4/ping_group_range", fmt.Appendf(nil, "%d %d", g, g), 0); err != nil {
			return fmt.Errorf("set ping_group_range: %w", err)
		}
	}
	// Check that the host now does what was asked.
	pfd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err == nil {
		unix.Close(pfd)
	}
	switch {
	case ping && err != nil:
		return fmt.Errorf("open an ICMP socket after setting ping_group_range: %w", err)
	case !ping && err == nil:
		return errors.New("a new network namespace allows ICMP sockets")
	case !ping && err != unix.EACCES:
		return fmt.Errorf("open an ICMP socket where forbidden: %w, want EACCES", err)
	}
	return nil
}
