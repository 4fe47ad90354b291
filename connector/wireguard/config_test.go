package wireguard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// Test keys: the interface uses RFC 7748's Alice, the peers Bob and Carol.
var (
	alicePriv = mustParseKey(rfc7748Pairs[0].privBase64)
	alicePub  = alicePriv.PublicKey()
	bobPub    = mustParseKey(rfc7748Pairs[1].publicBase64)
	carolPub  = Key{31: 9}.PublicKey()
	testPSK   = Key{0: 1, 1: 2, 2: 3, 31: 0xff}
)

func mustParseKey(s string) Key {
	k, err := ParseKey(s)
	if err != nil {
		panic(err)
	}
	return k
}

// realisticConf is a wg-quick file as people write them: comments, wg-quick
// hooks, mixed case, v4 and v6, repeated list keys, and appconnector's Tags.
var realisticConf = fmt.Sprintf(`# wg0.conf: app connector
[Interface]
PrivateKey = %s
Address = 10.8.0.1/24, fd00:8::1/64
address=10.9.0.1 # a bare IP is a /32
ListenPort = 51820
MTU = 1420
DNS = 1.1.1.1, 2606:4700:4700::1111
PostUp = iptables -A FORWARD -i %%i -j ACCEPT; iptables -t nat -A POSTROUTING -o eth0 -j MASQUERADE
PostDown = iptables -D FORWARD -i %%i -j ACCEPT
Table = off
SaveConfig = false

[Peer]   # laptop
publickey=%s
PresharedKey = %s
AllowedIPs = 10.8.0.2/32, fd00:8::2/128
AllowedIPs = 192.168.50.7/24
Tags = tag:eng, tag:ops # appconnector only
tags=tag:eng,tag:Build-2
Endpoint = vpn.example.com:51820
PersistentKeepalive = 25

[PEER]
  PublicKey   =   %s
AllowedIPs = 10.8.0.3
Endpoint = [2001:db8::7]:51821
PersistentKeepalive = off
`, alicePriv, bobPub, testPSK, carolPub)

var realisticWant = &Config{
	Interface: Interface{
		PrivateKey: alicePriv,
		Addresses: []netip.Prefix{
			netip.MustParsePrefix("10.8.0.1/24"),
			netip.MustParsePrefix("fd00:8::1/64"),
			netip.MustParsePrefix("10.9.0.1/32"),
		},
		ListenPort: 51820,
		MTU:        1420,
		DNS:        []netip.Addr{netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("2606:4700:4700::1111")},
	},
	Peers: []Peer{
		{
			PublicKey:    bobPub,
			PresharedKey: testPSK,
			AllowedIPs: []netip.Prefix{
				netip.MustParsePrefix("10.8.0.2/32"),
				netip.MustParsePrefix("fd00:8::2/128"),
				netip.MustParsePrefix("192.168.50.0/24"),
			},
			Endpoint:            "vpn.example.com:51820",
			PersistentKeepalive: 25,
			Tags:                []string{"tag:eng", "tag:ops", "tag:Build-2"},
		},
		{
			PublicKey:  carolPub,
			AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.8.0.3/32")},
			Endpoint:   "[2001:db8::7]:51821",
		},
	},
}

var realisticWarnings = []Warning{
	{File: "wg0.conf", Line: 9, Key: "PostUp", Msg: "hook commands are not run"},
	{File: "wg0.conf", Line: 10, Key: "PostDown", Msg: "hook commands are not run"},
	{File: "wg0.conf", Line: 11, Key: "Table", Msg: "the connector installs no kernel routes"},
	{File: "wg0.conf", Line: 12, Key: "SaveConfig", Msg: "the connector never writes the file back"},
}

func TestParseRealistic(t *testing.T) {
	for _, tc := range []struct{ name, text string }{
		{"LF", realisticConf},
		{"CRLF", strings.ReplaceAll(realisticConf, "\n", "\r\n")},
		{"BOM and CRLF", "\ufeff" + strings.ReplaceAll(realisticConf, "\n", "\r\n")},
		{"no final newline", strings.TrimSuffix(realisticConf, "\n")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, warnings, err := Parse("wg0.conf", []byte(tc.text))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual(cfg, realisticWant) {
				t.Errorf("Parse =\n%+v\nwant\n%+v", cfg, realisticWant)
			}
			if !reflect.DeepEqual(warnings, realisticWarnings) {
				t.Errorf("warnings =\n%v\nwant\n%v", warnings, realisticWarnings)
			}
		})
	}
}

func TestWarningString(t *testing.T) {
	w := Warning{File: "wg0.conf", Line: 4, Key: "DNS", Msg: "the connector does not change system DNS settings"}
	want := "wg0.conf:4: key DNS ignored: the connector does not change system DNS settings"
	if got := w.String(); got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func TestParseWarnings(t *testing.T) {
	text := fmt.Sprintf("[Interface]\nPrivateKey = %s\nfwmark = 0x1234\nPreUp = echo 1\nPreUp = echo 2\nPREDOWN = x\ndns =\nDNS = 10.0.0.1, corp.example\n", alicePriv)
	_, warnings, err := Parse("w.conf", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, w := range warnings {
		got = append(got, fmt.Sprintf("%d:%s", w.Line, w.Key))
	}
	want := []string{"3:FwMark", "4:PreUp", "5:PreUp", "6:PreDown"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("warnings = %v, want %v", got, want)
	}
}

// minimal returns a valid [Interface] section followed by rest.
func minimal(rest string) string {
	return fmt.Sprintf("[Interface]\nPrivateKey = %s\n%s", alicePriv, rest)
}

func TestParseValid(t *testing.T) {
	tests := []struct {
		name  string
		text  string
		check func(*Config) error
	}{
		{"no spaces, lower case", fmt.Sprintf("[interface]\nprivatekey=%s\n[peer]\npublickey=%s\nallowedips=0.0.0.0/0,::/0\n", alicePriv, bobPub),
			func(c *Config) error { return wantPrefixes(c.Peers[0].AllowedIPs, "0.0.0.0/0", "::/0") }},
		{"section header with spaces and comment", fmt.Sprintf("[ Interface ] # ours\nPrivateKey = %s # trailing comment\n", alicePriv), nil},
		{"address keeps host bits", minimal("Address = 10.0.0.1/24, fd00::1/64\n"),
			func(c *Config) error { return wantPrefixes(c.Interface.Addresses, "10.0.0.1/24", "fd00::1/64") }},
		{"allowed IPs are masked", minimal(fmt.Sprintf("[Peer]\nPublicKey = %s\nAllowedIPs = 10.0.0.5/24, fd00::5/64, 10.1.1.1\n", bobPub)),
			func(c *Config) error {
				return wantPrefixes(c.Peers[0].AllowedIPs, "10.0.0.0/24", "fd00::/64", "10.1.1.1/32")
			}},
		{"empty lists", minimal(fmt.Sprintf("Address =\n[Peer]\nPublicKey = %s\nAllowedIPs =\n", bobPub)),
			func(c *Config) error {
				if c.Interface.Addresses != nil || c.Peers[0].AllowedIPs != nil {
					return errors.New("empty list gave entries")
				}
				return nil
			}},
		{"zero values", minimal(fmt.Sprintf("ListenPort = 0\n[Peer]\nPublicKey = %s\nPersistentKeepalive = 0\n", bobPub)),
			func(c *Config) error {
				if c.Interface.ListenPort != 0 || c.Peers[0].PersistentKeepalive != 0 {
					return errors.New("zero values not kept")
				}
				return nil
			}},
		{"extremes", minimal(fmt.Sprintf("ListenPort = 65535\nMTU = 65535\n[Peer]\nPublicKey = %s\nPersistentKeepalive = 65535\n", bobPub)),
			func(c *Config) error {
				if c.Interface.ListenPort != 65535 || c.Interface.MTU != 65535 || c.Peers[0].PersistentKeepalive != 65535 {
					return errors.New("extreme values not kept")
				}
				return nil
			}},
		{"IPv4-only MTU 576", minimal("Address = 10.0.0.1/24\nMTU = 576\n"), nil},
		{"IPv6 MTU 1280", minimal("Address = fd00::1/64\nMTU = 1280\n"), nil},
		{"peers before interface", fmt.Sprintf("[Peer]\nPublicKey = %s\n[Interface]\nPrivateKey = %s\n", bobPub, alicePriv), nil},
		{"tags", minimal(fmt.Sprintf("[Peer]\nPublicKey = %s\nTAGS=tag:a\nTags =\ntags = tag:b , tag:a,tag:A-1  # c\n", bobPub)),
			func(c *Config) error {
				if got := c.Peers[0].Tags; !reflect.DeepEqual(got, []string{"tag:a", "tag:b", "tag:A-1"}) {
					return fmt.Errorf("tags %q", got)
				}
				return nil
			}},
		{"empty tags", minimal(fmt.Sprintf("[Peer]\nPublicKey = %s\nTags =\n", bobPub)),
			func(c *Config) error {
				if c.Peers[0].Tags != nil {
					return fmt.Errorf("tags %q", c.Peers[0].Tags)
				}
				return nil
			}},
		{"zero preshared key means none", minimal(fmt.Sprintf("[Peer]\nPublicKey = %s\nPresharedKey = %s\n", bobPub, Key{})),
			func(c *Config) error {
				if !c.Peers[0].PresharedKey.IsZero() {
					return errors.New("preshared key set")
				}
				return nil
			}},
	}
	endpoints := []string{"203.0.113.7:51820", "vpn.example.com:1", "vpn.example.com.:65535", "my_host-1:51820",
		"[2001:db8::1]:51820", "[fe80::1%eth0]:51820", "[::ffff:192.0.2.1]:1"}
	for _, ep := range endpoints {
		tests = append(tests, struct {
			name  string
			text  string
			check func(*Config) error
		}{"endpoint " + ep, minimal(fmt.Sprintf("[Peer]\nPublicKey = %s\nEndpoint = %s\n", bobPub, ep)),
			func(c *Config) error {
				if c.Peers[0].Endpoint != ep {
					return fmt.Errorf("endpoint %q", c.Peers[0].Endpoint)
				}
				return nil
			}})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _, err := Parse("t.conf", []byte(tc.text))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if tc.check != nil {
				if err := tc.check(cfg); err != nil {
					t.Error(err)
				}
			}
			if err := cfg.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}
}

func wantPrefixes(got []netip.Prefix, want ...string) error {
	var gotS []string
	for _, p := range got {
		gotS = append(gotS, p.String())
	}
	if !reflect.DeepEqual(gotS, want) {
		return fmt.Errorf("prefixes %v, want %v", gotS, want)
	}
	return nil
}

func TestParseErrors(t *testing.T) {
	const secret = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0cw=" // never to be echoed
	peer := func(rest string) string { return minimal(fmt.Sprintf("[Peer]\nPublicKey = %s\n%s", bobPub, rest)) }
	tests := []struct {
		name    string
		text    string
		line    int
		key     string
		wantMsg string // substring of Error()
	}{
		{"empty file", "", 0, "", "wg0.conf: no [Interface] section"},
		{"only comments", "# nothing\n\n   # here\n", 0, "", "no [Interface] section"},
		{"only a peer", fmt.Sprintf("[Peer]\nPublicKey = %s\n", bobPub), 0, "", "no [Interface] section"},
		{"key outside section", "# c\nListenPort = 1\n[Interface]\n", 2, "ListenPort", "wg0.conf:2: ListenPort: key outside of any section"},
		{"line without equals", minimal("just text\n"), 3, "", `wg0.conf:3: expected "Key = Value"`},
		{"pasted key", minimal(secret + "\n"), 3, "", "expected"},
		{"empty key", minimal("= 5\n"), 3, "", "expected"},
		{"unknown key", minimal("Foo = bar\n"), 3, "Foo", "wg0.conf:3: Foo: unknown key in [Interface] section"},
		{"misspelt secret key", minimal("PrivatKey = " + secret + "\n"), 3, "PrivatKey", "unknown key"},
		{"odd key is quoted", minimal("Priv ate = x\n"), 3, "Priv ate", `wg0.conf:3: "Priv ate": unknown key`},
		{"peer key in interface", minimal(fmt.Sprintf("PublicKey = %s\n", bobPub)), 3, "PublicKey", "unknown key in [Interface] section"},
		{"wg-quick key in peer", peer("DNS = 1.1.1.1\n"), 5, "DNS", "unknown key in [Peer] section"},
		{"kelvin sign is not k", minimal("ListenPort = 1\n[Peer]\nPublic\u212aey = x\n"), 5, "", "expected"},
		{"long key", minimal(strings.Repeat("A", 33) + " = x\n"), 3, "", "line not shown"},
		{"pasted section", minimal("[" + secret + "]\n"), 3, "", "wg0.conf:3: unknown section"},
		{"unknown section", minimal("[Peers]\n"), 3, "", "wg0.conf:3: unknown section [Peers]"},
		{"unclosed section", "[Interface\n", 1, "", "missing ']'"},
		{"second interface", minimal("[Interface]\n"), 3, "", "duplicate [Interface] section (first on line 1)"},
		{"duplicate ListenPort", minimal("ListenPort = 1\nListenPort = 2\n"), 4, "ListenPort", "wg0.conf:4: ListenPort: duplicate key (first set on line 3)"},
		{"duplicate PrivateKey", minimal(fmt.Sprintf("privatekey = %s\n", alicePriv)), 3, "PrivateKey", "duplicate key (first set on line 2)"},
		{"duplicate Endpoint", peer("Endpoint = a:1\nEndpoint = b:1\n"), 6, "Endpoint", "duplicate key (first set on line 5)"},
		{"missing PrivateKey", "# x\n[Interface]\nListenPort = 1\n", 2, "PrivateKey", "wg0.conf:2: PrivateKey: missing private key"},
		{"zero PrivateKey", fmt.Sprintf("[Interface]\nPrivateKey = %s\n", Key{}), 2, "PrivateKey", "all zeros"},
		{"bad PrivateKey", "[Interface]\nPrivateKey = " + secret + "x\n", 2, "PrivateKey", "wg0.conf:2: PrivateKey = (redacted): invalid key"},
		{"bad PresharedKey", peer("PresharedKey = " + secret[:40] + "\n"), 5, "PresharedKey", "PresharedKey = (redacted): invalid key: want 44"},
		{"bad PublicKey", minimal("[Peer]\nPublicKey = abc\n"), 4, "PublicKey", `PublicKey = (redacted): invalid key`},
		{"zero PublicKey", minimal(fmt.Sprintf("[Peer]\nPublicKey = %s\n", Key{})), 4, "PublicKey", "all zeros"},
		{"peer without PublicKey", minimal("[Peer]\nAllowedIPs = 10.0.0.0/8\n"), 3, "PublicKey", "wg0.conf:3: PublicKey: missing public key"},
		{"empty peer", minimal("[Peer]\n[Peer]\n"), 3, "PublicKey", "missing public key"},
		{"duplicate peer", peer(fmt.Sprintf("[Peer]\nPublicKey = %s\n", bobPub)), 6, "PublicKey", "duplicate peer public key (also used by peer 1)"},
		{"peer is ourselves", minimal(fmt.Sprintf("[Peer]\nPublicKey = %s\n", alicePub)), 4, "PublicKey", "interface's own public key"},
		{"bad AllowedIPs", peer("AllowedIPs = 10.0.0.300/32\n"), 5, "AllowedIPs", `wg0.conf:5: AllowedIPs = "10.0.0.300/32": invalid prefix: `},
		{"bad bits", peer("AllowedIPs = 10.0.0.0/33\n"), 5, "AllowedIPs", "invalid prefix"},
		{"empty list item", peer("AllowedIPs = 10.0.0.1/32,,10.0.0.2/32\n"), 5, "AllowedIPs", "invalid prefix"},
		{"trailing comma", peer("AllowedIPs = 10.0.0.1/32,\n"), 5, "AllowedIPs", "invalid prefix"},
		{"address with zone", minimal("Address = fe80::1%eth0\n"), 3, "Address", "has a zone"},
		{"hostname address", minimal("Address = host.example\n"), 3, "Address", "invalid prefix"},
		{"ListenPort too big", minimal("ListenPort = 65536\n"), 3, "ListenPort", "invalid port: want 0..65535"},
		{"ListenPort negative", minimal("ListenPort = -1\n"), 3, "ListenPort", "invalid port"},
		{"ListenPort empty", minimal("ListenPort =\n"), 3, "ListenPort", "wg0.conf:3: ListenPort: invalid port"},
		{"MTU too small", minimal("MTU = 575\n"), 3, "MTU", "invalid MTU: want 576..65535"},
		{"MTU too big", minimal("MTU = 65536\n"), 3, "MTU", "invalid MTU"},
		{"MTU zero", minimal("MTU = 0\n"), 3, "MTU", "invalid MTU"},
		{"MTU too small for IPv6", minimal("MTU = 1279\nAddress = 10.0.0.1/24\nAddress = fd00::1/64\n"), 3, "MTU", "below 1280"},
		{"Endpoint without port", peer("Endpoint = vpn.example.com\n"), 5, "Endpoint", "want host:port"},
		{"Endpoint port 0", peer("Endpoint = vpn.example.com:0\n"), 5, "Endpoint", "want 1..65535"},
		{"Endpoint port too big", peer("Endpoint = 1.2.3.4:65536\n"), 5, "Endpoint", "want 1..65535"},
		{"Endpoint named port", peer("Endpoint = 1.2.3.4:wireguard\n"), 5, "Endpoint", "invalid endpoint port"},
		{"Endpoint unbracketed IPv6", peer("Endpoint = 2001:db8::1:51820\n"), 5, "Endpoint", "want host:port"},
		{"Endpoint bracketed IPv4", peer("Endpoint = [192.0.2.1]:51820\n"), 5, "Endpoint", "invalid endpoint IPv6 address"},
		{"Endpoint bad zone", peer("Endpoint = [fe80::1%a/b]:51820\n"), 5, "Endpoint", "invalid endpoint IPv6 address"},
		{"Endpoint bad host", peer("Endpoint = bad!host:51820\n"), 5, "Endpoint", "invalid endpoint host name"},
		{"Endpoint empty label", peer("Endpoint = a..b:51820\n"), 5, "Endpoint", "invalid endpoint host name"},
		{"Endpoint empty host", peer("Endpoint = :51820\n"), 5, "Endpoint", "invalid endpoint host name"},
		{"Endpoint bad IPv4", peer("Endpoint = 10.0.0.300:51820\n"), 5, "Endpoint", "invalid endpoint IPv4 address"},
		{"Endpoint empty", peer("Endpoint =\n"), 5, "Endpoint", "want host:port"},
		{"keepalive too big", peer("PersistentKeepalive = 65536\n"), 5, "PersistentKeepalive", `invalid interval ("off" or seconds)`},
		{"keepalive on", peer("PersistentKeepalive = on\n"), 5, "PersistentKeepalive", "invalid interval"},
		{"bad tag", peer("Tags = tag:eng\nTags = tag:ops, eng\n"), 6, "Tags",
			`wg0.conf:6: Tags = "tag:ops, eng": invalid tag "eng": want "tag:" followed by a letter and then letters, digits or '-'`},
		{"empty tag name", peer("Tags = tag:\n"), 5, "Tags", `invalid tag "tag:"`},
		{"tag digit first", peer("Tags = tag:1a\n"), 5, "Tags", `invalid tag "tag:1a"`},
		{"tag underscore", peer("Tags = tag:a_b\n"), 5, "Tags", `invalid tag "tag:a_b"`},
		{"tag upper prefix", peer("Tags = TAG:a\n"), 5, "Tags", `invalid tag "TAG:a"`},
		{"tag star", peer("Tags = *\n"), 5, "Tags", `invalid tag "*"`},
		{"tag inner space", peer("Tags = tag:a b\n"), 5, "Tags", `invalid tag "tag:a b"`},
		{"tags trailing comma", peer("Tags = tag:a,\n"), 5, "Tags", `invalid tag ""`},
		{"tags in interface", minimal("Tags = tag:a\n"), 3, "Tags", "unknown key in [Interface] section"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, warnings, err := Parse("wg0.conf", []byte(tc.text))
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", cfg)
			}
			if cfg != nil || warnings != nil {
				t.Errorf("Parse returned config %v and warnings %v with an error", cfg, warnings)
			}
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v (%T) is not a *ParseError", err, err)
			}
			if pe.File != "wg0.conf" || pe.Line != tc.line || pe.Key != tc.key {
				t.Errorf("ParseError at %s:%d key %q, want wg0.conf:%d key %q (%v)", pe.File, pe.Line, pe.Key, tc.line, tc.key, err)
			}
			if pe.Err == nil || errors.Unwrap(err) != pe.Err {
				t.Errorf("Unwrap() = %v, want Err %v", errors.Unwrap(err), pe.Err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.wantMsg) {
				t.Errorf("error %q does not contain %q", msg, tc.wantMsg)
			}
			if want := fmt.Sprintf("wg0.conf:%d: ", tc.line); tc.line > 0 && !strings.HasPrefix(msg, want) {
				t.Errorf("error %q does not start with %q", msg, want)
			}
			for _, s := range []string{secret[:20], alicePriv.String()[:20], testPSK.String()[:20]} {
				if strings.Contains(msg, s) {
					t.Errorf("error %q leaks a secret", msg)
				}
			}
		})
	}
}

func TestParseErrorFormat(t *testing.T) {
	inner := errors.New("boom")
	tests := []struct {
		err  ParseError
		want string
	}{
		{ParseError{File: "a.conf", Line: 7, Key: "AllowedIPs", Value: "x", Err: inner}, `a.conf:7: AllowedIPs = "x": boom`},
		{ParseError{File: "a.conf", Line: 7, Key: "PrivateKey", Value: redacted, Err: inner}, "a.conf:7: PrivateKey = (redacted): boom"},
		{ParseError{File: "a.conf", Line: 7, Key: "MTU", Err: inner}, "a.conf:7: MTU: boom"},
		{ParseError{File: "a.conf", Err: inner}, "a.conf: boom"},
		{ParseError{Line: 3, Err: inner}, "<input>:3: boom"},
	}
	for _, tc := range tests {
		t.Run(tc.want, func(t *testing.T) {
			if got := tc.err.Error(); got != tc.want {
				t.Errorf("Error() = %q, want %q", got, tc.want)
			}
			if !errors.Is(&tc.err, inner) {
				t.Error("errors.Is does not see the wrapped error")
			}
		})
	}
}

const realisticCanonical = `[Interface]
PrivateKey = dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=
Address = 10.8.0.1/24, fd00:8::1/64, 10.9.0.1/32
DNS = 1.1.1.1, 2606:4700:4700::1111
ListenPort = 51820
MTU = 1420

[Peer]
PublicKey = 3p7bfXt9wbTTW2HC7OQ1Nz+DQ8hbeGdNrfx+FG+IK08=
PresharedKey = AQIDAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAP8=
AllowedIPs = 10.8.0.2/32, fd00:8::2/128, 192.168.50.0/24
Endpoint = vpn.example.com:51820
PersistentKeepalive = 25
Tags = tag:eng, tag:ops, tag:Build-2

[Peer]
PublicKey = %s
AllowedIPs = 10.8.0.3/32
Endpoint = [2001:db8::7]:51821
`

func TestWriteTo(t *testing.T) {
	var buf bytes.Buffer
	n, err := realisticWant.WriteTo(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) {
		t.Errorf("WriteTo returned %d, wrote %d bytes", n, buf.Len())
	}
	if want := fmt.Sprintf(realisticCanonical, carolPub); buf.String() != want {
		t.Errorf("WriteTo wrote\n%s\nwant\n%s", buf.String(), want)
	}
}

func TestRoundTrip(t *testing.T) {
	configs := map[string]*Config{
		"realistic": realisticWant,
		"minimal":   {Interface: Interface{PrivateKey: alicePriv}},
		"no lists":  {Interface: Interface{PrivateKey: alicePriv}, Peers: []Peer{{PublicKey: bobPub}, {PublicKey: carolPub}}},
		"tags": {Interface: Interface{PrivateKey: alicePriv}, Peers: []Peer{
			{PublicKey: bobPub, Tags: []string{"tag:x"}},
			{PublicKey: carolPub, Tags: []string{"tag:b", "tag:a", "tag:Z-9"}}}},
		"4in6 and v6 host": {Interface: Interface{PrivateKey: alicePriv, MTU: 1280, Addresses: []netip.Prefix{
			netip.MustParsePrefix("::ffff:10.0.0.1/120"), netip.MustParsePrefix("2001:db8::1/128")}}},
	}
	for name, cfg := range configs {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			if _, err := cfg.WriteTo(&buf); err != nil {
				t.Fatal(err)
			}
			back, warnings, err := Parse("rt.conf", buf.Bytes())
			if err != nil {
				t.Fatalf("Parse(WriteTo()): %v\n%s", err, buf.String())
			}
			if len(warnings) != 0 {
				t.Errorf("canonical output has warnings: %v", warnings)
			}
			if !reflect.DeepEqual(back, cfg) {
				t.Errorf("round trip =\n%+v\nwant\n%+v", back, cfg)
			}
		})
	}
}

func TestWriteToMasksAllowedIPs(t *testing.T) {
	cfg := &Config{Interface: Interface{PrivateKey: alicePriv},
		Peers: []Peer{{PublicKey: bobPub, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.5/24")}}}}
	var buf bytes.Buffer
	if _, err := cfg.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "AllowedIPs = 10.0.0.0/24\n") {
		t.Errorf("AllowedIPs not masked:\n%s", buf.String())
	}
}

func TestValidate(t *testing.T) {
	valid := func(edit func(*Config)) *Config {
		c := &Config{Interface: Interface{PrivateKey: alicePriv, Addresses: []netip.Prefix{netip.MustParsePrefix("fd00::1/64")}},
			Peers: []Peer{{PublicKey: bobPub}, {PublicKey: carolPub}}}
		edit(c)
		return c
	}
	tests := []struct {
		name string
		cfg  *Config
		want string // "" means valid
	}{
		{"valid", valid(func(*Config) {}), ""},
		{"no private key", valid(func(c *Config) { c.Interface.PrivateKey = Key{} }), "[Interface] PrivateKey: missing private key"},
		{"invalid address", valid(func(c *Config) { c.Interface.Addresses = append(c.Interface.Addresses, netip.Prefix{}) }), "Address: invalid prefix"},
		{"MTU too big", valid(func(c *Config) { c.Interface.MTU = 70000 }), "MTU 70000 out of range"},
		{"MTU negative", valid(func(c *Config) { c.Interface.MTU = -1 }), "out of range"},
		{"MTU IPv6", valid(func(c *Config) { c.Interface.MTU = 1000 }), "below 1280"},
		{"no public key", valid(func(c *Config) { c.Peers[1].PublicKey = Key{} }), "peer 2 ("},
		{"duplicate peer", valid(func(c *Config) { c.Peers[1].PublicKey = bobPub }), "duplicate peer public key (also used by peer 1)"},
		{"own key", valid(func(c *Config) { c.Peers[0].PublicKey = alicePub }), "interface's own public key"},
		{"invalid allowed IP", valid(func(c *Config) { c.Peers[0].AllowedIPs = []netip.Prefix{{}} }), "AllowedIPs: invalid prefix"},
		{"endpoint injection", valid(func(c *Config) { c.Peers[0].Endpoint = "a:1\n[Peer]\nPublicKey = x" }), "Endpoint: invalid endpoint"},
		{"endpoint comment", valid(func(c *Config) { c.Peers[0].Endpoint = "a:1#x" }), "Endpoint: invalid endpoint port"},
		{"endpoint space", valid(func(c *Config) { c.Peers[0].Endpoint = " a:1" }), "Endpoint: invalid endpoint host"},
		{"tags", valid(func(c *Config) { c.Peers[1].Tags = []string{"tag:a", "tag:b"} }), ""},
		{"tag injection", valid(func(c *Config) { c.Peers[1].Tags = []string{"tag:a\n[Peer]\nPublicKey = x"} }), "peer 2 ("},
		{"tag with comma", valid(func(c *Config) { c.Peers[0].Tags = []string{"tag:a,tag:b"} }), `Tags: invalid tag "tag:a,tag:b"`},
		{"empty tag", valid(func(c *Config) { c.Peers[0].Tags = []string{""} }), `Tags: invalid tag ""`},
		{"duplicate tag", valid(func(c *Config) { c.Peers[0].Tags = []string{"tag:a", "tag:b", "tag:a"} }), `Tags: duplicate tag "tag:a"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want error containing %q", err, tc.want)
			}
			var buf bytes.Buffer
			if _, werr := tc.cfg.WriteTo(&buf); werr == nil || buf.Len() != 0 {
				t.Errorf("WriteTo of an invalid config: err %v, wrote %q", werr, buf.String())
			}
			if _, uerr := tc.cfg.UAPI(context.Background(), nil); uerr == nil {
				t.Error("UAPI of an invalid config succeeded")
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "wg0.conf")
	if err := os.WriteFile(good, []byte(realisticConf), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, warnings, err := Load(good)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg, realisticWant) || len(warnings) != len(realisticWarnings) || warnings[0].File != good {
		t.Errorf("Load = %+v, %v", cfg, warnings)
	}

	bad := filepath.Join(dir, "bad.conf")
	if err := os.WriteFile(bad, []byte("[Interface]\nMTU = 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err = Load(bad)
	var pe *ParseError
	if !errors.As(err, &pe) || !strings.HasPrefix(err.Error(), bad+":2: MTU") {
		t.Errorf("Load(bad) = %v, want a ParseError at %s:2", err, bad)
	}

	missing := filepath.Join(dir, "missing.conf")
	_, _, err = Load(missing)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("Load(missing) = %v, want ErrNotExist naming the path", err)
	}
}

// TestUAPIOmitsTags checks that tags, which wireguard-go does not know,
// stay out of the configuration protocol.
func TestUAPIOmitsTags(t *testing.T) {
	tagged := &Config{Interface: Interface{PrivateKey: alicePriv},
		Peers: []Peer{{PublicKey: bobPub, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/32")}, Tags: []string{"tag:eng"}}}}
	plain := &Config{Interface: tagged.Interface, Peers: []Peer{tagged.Peers[0]}}
	plain.Peers[0].Tags = nil
	got, err := tagged.UAPI(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	want, err := plain.UAPI(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got != want || strings.Contains(got, "tag") {
		t.Errorf("UAPI with tags =\n%s\nwant\n%s", got, want)
	}
}
