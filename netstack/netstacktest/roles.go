package netstacktest

import (
	"fmt"
	"os"
	"testing"
)

// roleEnv names the role a test binary was started to play.
const roleEnv = "APPCONNECTOR_TEST_ROLE"

// Main is a TestMain's body for a test binary that also plays helper
// processes (a server in another process, a child that is killed, the
// binary itself): started with RoleEnv(name) in its environment, the binary
// runs roles[name] with its command-line arguments and exits with the
// status it returns. Otherwise Main runs the tests and returns their
// status, for TestMain to clean up and pass to os.Exit.
func Main(m *testing.M, roles map[string]func(args []string) int) int {
	if name := os.Getenv(roleEnv); name != "" {
		role, ok := roles[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "this test binary has no role %q\n", name)
			os.Exit(2)
		}
		os.Exit(role(os.Args[1:]))
	}
	return m.Run()
}

// RoleEnv is the environment entry that makes a test binary whose TestMain
// calls Main play role.
func RoleEnv(role string) string { return roleEnv + "=" + role }
