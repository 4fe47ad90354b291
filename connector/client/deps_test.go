package client_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The client library links none of the server: a program that embeds it
// (a serverless function) carries neither the connector package nor
// Prometheus.
func TestClientDoesNotImportTheServer(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if pkg == "github.com/appconnector/appconnector/connector" || strings.HasPrefix(pkg, "github.com/prometheus/") {
			t.Errorf("the client imports %s", pkg)
		}
	}
}
