package connector

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRoutesFileRoundTripAndCorrupt(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, routesFileName)
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	if rs, err := loadRoutes(path, now); err != nil || rs != nil {
		t.Fatalf("missing file: %v, %v", rs, err)
	}
	want := []storedRoute{{Addr: netip.MustParseAddr("192.0.2.1"), App: "a", Domain: "x.a.com", FirstSeen: now, LastSeen: now, Approved: true}}
	if err := saveRoutes(path, want); err != nil {
		t.Fatal(err)
	}
	got, err := loadRoutes(path, now)
	if err != nil || len(got) != 1 || got[0] != want[0] {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode())
	}

	for _, junk := range []string{"", "{", `{"version": 9, "routes": []}`, `{"version": 1, "routes": [{"app": "a"}]}`, `{"version":1,"routes":[],"extra":1}`} {
		os.WriteFile(path, []byte(junk), 0o600)
		rs, err := loadRoutes(path, now)
		if err == nil || rs != nil {
			t.Errorf("%q: loaded %v, %v", junk, rs, err)
			continue
		}
		aside := path + ".corrupt-" + "1795694400"
		if !strings.Contains(err.Error(), aside) {
			t.Errorf("%q: error %q does not say where the file went", junk, err)
		}
		if b, rerr := os.ReadFile(aside); rerr != nil || string(b) != junk {
			t.Errorf("%q: the corrupt file was not kept aside: %v", junk, rerr)
		}
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("%q: corrupt file still in place", junk)
		}
		os.Remove(aside)
	}
}
