package main

import (
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/appconnector/appconnector/"

// layers lists the module's packages by role, bottom first: a package
// imports only packages of layers below its own (test files aside).
var layers = [][]string{
	{"connector/logger", "connector/netx", "connector/apptype", "netstack/netstacktest", "connector/kerneltest"},
	{"tun", "connector/proxy", "connector/upstream", "connector/flowlog"},
	{"netstack", "connector/dnszone", "connector/proxy/socks5", "connector/proxy/httpproxy", "connector/proxy/proxytest"},
	{"connector/dnstest"},
	{"connector/wireguard"},
	{"connector/wireguard/wgtest"},
	{"connector", "connector/client"},
	{"connector/demo", "connector/client/clientadmin"},
	{"cmd/appconnector", "bench"},
}

type listedPackage struct {
	ImportPath string
	Imports    []string
	Deps       []string
}

// goList runs go list -json on patterns.
func goList(t *testing.T, patterns ...string) []listedPackage {
	t.Helper()
	out, err := exec.Command("go", append([]string{"list", "-json"}, patterns...)...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		t.Skipf("go list: %v", err) // no go command on this machine
	}
	var pkgs []listedPackage
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p listedPackage
		if err := dec.Decode(&p); err == io.EOF {
			return pkgs
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
}

func layerOf(pkg string) int {
	for i, l := range layers {
		if slices.Contains(l, strings.TrimPrefix(pkg, module)) {
			return i
		}
	}
	return -1
}

// Every package sits in a layer and imports only from layers below it.
func TestPackagesImportOnlyDownward(t *testing.T) {
	for _, p := range goList(t, "../../...") {
		own := layerOf(p.ImportPath)
		if own < 0 {
			t.Errorf("package %s is in no layer of layers_test.go: add it where its role puts it", p.ImportPath)
			continue
		}
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module) {
				continue
			}
			if l := layerOf(imp); l >= own {
				t.Errorf("%s (layer %d) imports %s (layer %d): packages import only downward", p.ImportPath, own, imp, l)
			}
		}
	}
}

// The shipped binary does not link the testing package; the client
// library, which serverless programs embed, links neither the server
// package nor Prometheus; the shared vocabulary links no gVisor.
func TestDependencies(t *testing.T) {
	for _, tc := range []struct {
		pkg       string
		forbidden func(dep string) bool
	}{
		{".", func(d string) bool { return d == "testing" }},
		{"../../connector/client", func(d string) bool {
			return d == module+"connector" || strings.HasPrefix(d, "github.com/prometheus/")
		}},
		{"../../connector/apptype", func(d string) bool { return strings.HasPrefix(d, "gvisor.dev/") }},
	} {
		pkgs := goList(t, tc.pkg)
		for _, d := range pkgs[0].Deps {
			if tc.forbidden(d) {
				t.Errorf("%s depends on %s", pkgs[0].ImportPath, d)
			}
		}
	}
}
