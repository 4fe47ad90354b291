package connector

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector/wireguard"
)

func testKey(t *testing.T) wireguard.Key {
	t.Helper()
	k, err := wireguard.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}

func TestEndpointsFileRoundTripAndCorrupt(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, endpointsFileName)
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	if eps, err := loadEndpoints(path, now); err != nil || eps != nil {
		t.Fatalf("missing file: %v, %v", eps, err)
	}
	want := []storedEndpoint{
		{PublicKey: testKey(t), Endpoint: netip.MustParseAddrPort("127.0.0.1:40000"), LastHandshake: now},
		{PublicKey: testKey(t), Endpoint: netip.MustParseAddrPort("[::1]:40001"), Configured: "peer.example:51820", LastHandshake: now.Add(-time.Hour)},
	}
	if err := saveEndpoints(path, want); err != nil {
		t.Fatal(err)
	}
	got, err := loadEndpoints(path, now)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode())
	}
	if err := saveEndpoints(path, nil); err != nil {
		t.Fatal(err)
	}
	if got, err := loadEndpoints(path, now); err != nil || len(got) != 0 {
		t.Fatalf("no peers: %+v, %v", got, err)
	}

	k := want[0].PublicKey.String()
	for _, junk := range []string{
		"", "{", "null x",
		`{"version": 2, "peers": []}`,
		`{"version": 1, "peers": [], "extra": 1}`,
		`{"version": 1, "peers": [{"publicKey": "short", "endpoint": "127.0.0.1:1"}]}`,
		`{"version": 1, "peers": [{"publicKey": "` + k + `"}]}`,
		`{"version": 1, "peers": [{"publicKey": "` + k + `", "endpoint": "127.0.0.1:0"}]}`,
		`{"version": 1, "peers": [{"endpoint": "127.0.0.1:1"}]}`,
		`{"version": 1, "peers": [{"publicKey": "` + k + `", "endpoint": "127.0.0.1:1"}, {"publicKey": "` + k + `", "endpoint": "127.0.0.1:2"}]}`,
	} {
		os.WriteFile(path, []byte(junk), 0o600)
		eps, err := loadEndpoints(path, now)
		if err == nil || eps != nil {
			t.Errorf("%q: loaded %v, %v", junk, eps, err)
			continue
		}
		aside := path + ".corrupt-" + "1796212800"
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

// TestEndpointsCorruptFileNotMovable: a corrupt file that cannot be moved
// aside (a directory is in the way) stays in place, and the error forbids
// overwriting it.
func TestEndpointsCorruptFileNotMovable(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, endpointsFileName)
	now := time.Now()
	os.WriteFile(path, []byte("{"), 0o600)
	blocker := fmt.Sprintf("%s.corrupt-%d", path, now.Unix())
	os.MkdirAll(filepath.Join(blocker, "x"), 0o700)
	_, err := loadEndpoints(path, now)
	if err == nil || !strings.Contains(err.Error(), "could not be moved aside") {
		t.Fatalf("error %v", err)
	}
	if !errors.Is(err, errStateUnreadable) {
		t.Errorf("error %v does not forbid writing the file", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "{" {
		t.Errorf("file now holds %q", b)
	}
}

// TestEndpointMemoryDecides: which endpoint each configured peer starts
// with, who gets a handshake, and what is written back.
func TestEndpointMemoryDecides(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	learned := netip.MustParseAddrPort("198.51.100.7:41000")
	recent, old := now.Add(-30*time.Second), now.Add(-time.Hour)
	for _, tc := range []struct {
		name       string
		configured string // the peer's Endpoint in this run's config
		stored     *storedEndpoint
		wantEP     string // the endpoint the device gets
		wantGreet  bool
		wantKept   bool // the stored entry is written back until the peer handshakes
	}{
		{name: "nothing stored", configured: "", wantEP: ""},
		{name: "nothing stored, configured", configured: "192.0.2.1:51820", wantEP: "192.0.2.1:51820"},
		{name: "no config endpoint", stored: &storedEndpoint{Endpoint: learned, LastHandshake: recent},
			wantEP: learned.String(), wantGreet: true, wantKept: true},
		{name: "old session: endpoint, no handshake", stored: &storedEndpoint{Endpoint: learned, LastHandshake: old},
			wantEP: learned.String(), wantKept: true},
		{name: "learned after the configured one", configured: "peer.example:51820",
			stored: &storedEndpoint{Endpoint: learned, Configured: "peer.example:51820", LastHandshake: recent},
			wantEP: learned.String(), wantGreet: true, wantKept: true},
		{name: "learned after the configured one, old session", configured: "peer.example:51820",
			stored: &storedEndpoint{Endpoint: learned, Configured: "peer.example:51820", LastHandshake: old},
			wantEP: "peer.example:51820"},
		{name: "config edited since", configured: "192.0.2.9:51820",
			stored: &storedEndpoint{Endpoint: learned, Configured: "peer.example:51820", LastHandshake: recent},
			wantEP: "192.0.2.9:51820", wantGreet: true},
		{name: "endpoint added to the config since", configured: "192.0.2.9:51820",
			stored: &storedEndpoint{Endpoint: learned, LastHandshake: recent},
			wantEP: "192.0.2.9:51820", wantGreet: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, gone := testKey(t), testKey(t)
			cfg := &wireguard.Config{Peers: []wireguard.Peer{{PublicKey: k, Endpoint: tc.configured}}}
			stored := []storedEndpoint{{PublicKey: gone, Endpoint: netip.MustParseAddrPort("203.0.113.1:1"), LastHandshake: recent}}
			if tc.stored != nil {
				s := *tc.stored
				s.PublicKey = k
				stored = append(stored, s)
			}
			m, out := newEndpointMemory("unused", cfg, stored, now)
			if got := out.Peers[0].Endpoint; got != tc.wantEP {
				t.Errorf("device endpoint %q, want %q", got, tc.wantEP)
			}
			if cfg.Peers[0].Endpoint != tc.configured {
				t.Errorf("the caller's config was changed: %q", cfg.Peers[0].Endpoint)
			}
			var wantGreet []wireguard.Key
			if tc.wantGreet {
				wantGreet = []wireguard.Key{k}
			}
			if !slices.Equal(m.handshake, wantGreet) {
				t.Errorf("handshakes with %v, want %v", m.handshake, wantGreet)
			}
			// Before the peer handshakes, the file keeps what was
			// restored, and never the peer that left the config.
			cur := m.current([]peerState{{key: k.String(), endpoint: tc.wantEP}})
			var kept []storedEndpoint
			if tc.wantKept {
				kept = []storedEndpoint{stored[1]}
			}
			if !slices.Equal(cur, kept) {
				t.Errorf("written back before a handshake: %+v, want %+v", cur, kept)
			}
			if !stale(m.saved, cur) {
				t.Error("the removed peer would stay in the file")
			}
			// After a handshake, the device's endpoint, with this
			// config's Endpoint beside it.
			moved := netip.MustParseAddrPort("127.0.0.1:42000")
			cur = m.current([]peerState{{key: k.String(), endpoint: moved.String(), handshakeSec: now.Unix()}})
			want := []storedEndpoint{{PublicKey: k, Endpoint: moved, Configured: tc.configured, LastHandshake: now}}
			if !slices.Equal(cur, want) {
				t.Errorf("written back after a handshake: %+v, want %+v", cur, want)
			}
		})
	}
}

// TestEndpointsWrittenWhenStale: the file is rewritten when a peer comes,
// goes or moves, and for a newer handshake alone only once it lags by
// more than handshakeRefresh.
func TestEndpointsWrittenWhenStale(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	a, b := testKey(t), testKey(t)
	ep := netip.MustParseAddrPort("127.0.0.1:40000")
	base := []storedEndpoint{{PublicKey: a, Endpoint: ep, LastHandshake: now}}
	with := func(f func(*storedEndpoint)) []storedEndpoint {
		s := base[0]
		f(&s)
		return []storedEndpoint{s}
	}
	for _, tc := range []struct {
		name string
		cur  []storedEndpoint
		want bool
	}{
		{"same", base, false},
		{"handshake a little newer", with(func(s *storedEndpoint) { s.LastHandshake = now.Add(handshakeRefresh) }), false},
		{"handshake much newer", with(func(s *storedEndpoint) { s.LastHandshake = now.Add(handshakeRefresh + time.Second) }), true},
		{"moved", with(func(s *storedEndpoint) { s.Endpoint = netip.MustParseAddrPort("127.0.0.1:40001") }), true},
		{"config endpoint changed", with(func(s *storedEndpoint) { s.Configured = "192.0.2.1:51820" }), true},
		{"peer came", append(slices.Clone(base), storedEndpoint{PublicKey: b, Endpoint: ep, LastHandshake: now}), true},
		{"peer went", nil, true},
	} {
		if got := stale(base, tc.cur); got != tc.want {
			t.Errorf("%s: stale = %v, want %v", tc.name, got, tc.want)
		}
	}

	// flush writes only when stale.
	path := filepath.Join(t.TempDir(), endpointsFileName)
	m, _ := newEndpointMemory(path, &wireguard.Config{Peers: []wireguard.Peer{{PublicKey: a}}}, nil, now)
	peers := []peerState{{key: a.String(), endpoint: ep.String(), handshakeSec: now.Unix()}}
	if wrote, err := m.flush(peers); err != nil || !wrote {
		t.Fatalf("first flush: wrote %v, %v", wrote, err)
	}
	got, err := loadEndpoints(path, now)
	if err != nil || !slices.Equal(got, base) {
		t.Fatalf("after the first flush: %+v, %v", got, err)
	}
	os.Remove(path)
	peers[0].handshakeSec += 10
	if wrote, err := m.flush(peers); err != nil || wrote {
		t.Fatalf("flush for a handshake 10 s newer: wrote %v, %v", wrote, err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("written again for a handshake 10 s newer: %v", err)
	}
}

// FuzzLoadEndpoints: any file either loads into valid entries that survive
// a save and load, or is moved aside intact.
func FuzzLoadEndpoints(f *testing.F) {
	f.Add([]byte(`{"version": 1, "peers": [{"publicKey": "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=", "endpoint": "127.0.0.1:1", "lastHandshake": "2026-12-02T12:00:00Z"}]}`))
	f.Add([]byte(`{"version": 1, "peers": []}`))
	f.Add([]byte(`{"version": 1, "peers": [{"publicKey": "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=", "endpoint": "[fe80::1%eth0]:1"}]}`))
	f.Add([]byte("{"))
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), endpointsFileName)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		eps, err := loadEndpoints(path, now)
		if err != nil {
			b, rerr := os.ReadFile(fmt.Sprintf("%s.corrupt-%d", path, now.Unix()))
			if rerr != nil || !bytes.Equal(b, data) {
				t.Fatalf("rejected (%v) but not kept aside: %v", err, rerr)
			}
			return
		}
		for _, e := range eps {
			if e.PublicKey.IsZero() || !e.Endpoint.IsValid() || e.Endpoint.Port() == 0 {
				t.Fatalf("loaded an invalid entry %+v", e)
			}
		}
		if err := saveEndpoints(path, eps); err != nil {
			t.Fatal(err)
		}
		again, err := loadEndpoints(path, now)
		if err != nil || len(again) != len(eps) {
			t.Fatalf("saved entries do not load again: %v, %+v", err, again)
		}
		for i := range eps {
			if again[i].PublicKey != eps[i].PublicKey || again[i].Endpoint != eps[i].Endpoint ||
				again[i].Configured != eps[i].Configured || !again[i].LastHandshake.Equal(eps[i].LastHandshake) {
				t.Fatalf("entry %d changed: %+v, then %+v", i, eps[i], again[i])
			}
		}
	})
}
