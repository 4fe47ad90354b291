package kerneltest

import (
	"math"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// requireEnv, set to "require", turns the tier's skips into failures: CI
// sets it so that a missing tool cannot pass unnoticed.
const requireEnv = "APPCONNECTOR_KERNEL_TESTS"

// scaleEnv scales the tier's counts, e.g. 0.2 for a quick local run.
const scaleEnv = "APPCONNECTOR_KERNEL_SCALE"

// tools are the programs the tier runs, each with the Debian package that
// has it.
var tools = []struct{ name, pkg string }{
	{"ip", "iproute2"},
	{"nft", "nftables"},
	{"wireguard-go", "wireguard-go"},
	{"wg", "wireguard-tools"},
	{"curl", "curl"},
	{"setpriv", "util-linux"},
	{"ping", "iputils-ping"},
	{"traceroute", "traceroute"},
}

// needKernelTier skips t, with one line saying what is missing, unless
// the machine can run the tier; under APPCONNECTOR_KERNEL_TESTS=require
// it fails t instead.
func needKernelTier(t *testing.T) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (network namespaces, TUN devices, nftables)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		missing = append(missing, "/dev/net/tun")
	}
	var pkgs []string
	for _, tool := range tools {
		if _, err := exec.LookPath(tool.name); err != nil {
			pkgs = append(pkgs, tool.name+" ("+tool.pkg+")")
		}
	}
	if len(pkgs) > 0 {
		missing = append(missing, "tools "+strings.Join(pkgs, ", "))
	}
	if len(missing) > 0 {
		skipOrFail(t, "kernel-peer tier needs "+strings.Join(missing, "; "))
	}
}

// skipOrFail skips t with msg, or fails it under
// APPCONNECTOR_KERNEL_TESTS=require.
func skipOrFail(t *testing.T, msg string) {
	t.Helper()
	if os.Getenv(requireEnv) == "require" {
		t.Fatalf("%s (and %s=require)", msg, requireEnv)
	}
	t.Skipf("skipped: %s (set %s=require to fail instead)", msg, requireEnv)
}

// scaled is n scaled by APPCONNECTOR_KERNEL_SCALE, at least min(n, lo).
func scaled(t *testing.T, n, lo int) int {
	t.Helper()
	v := os.Getenv(scaleEnv)
	if v == "" {
		return n
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f <= 0 || math.IsInf(f, 0) || math.IsNaN(f) {
		t.Fatalf("%s=%q: want a positive number", scaleEnv, v)
	}
	return max(int(math.Ceil(float64(n)*f)), min(n, lo))
}
