package apptype

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"go4.org/netipx"
)

func policyPrefixes(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, v := range s {
		out = append(out, netip.MustParsePrefix(v))
	}
	return out
}

// WireGuard public keys for "peers" entries: the base64 of bytes 1..32 and
// of 101..132.
const (
	testPeerKey1 = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="
	testPeerKey2 = "ZWZnaGlqa2xtbm9wcXJzdHV2d3h5ent8fX5/gIGCg4Q="
)

func TestParsePolicyValid(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []App
	}{
		{name: "null", in: "null"},
		{name: "empty array", in: " [ ] \n"},
		{
			name: "example",
			in: `[{"name": "myapp", "connectors": ["tag:connector"],
				"domains": ["example.com", "*.example.com"],
				"routes": ["192.0.2.0/24", "2001:db8::/48"]}]`,
			want: []App{{
				Name:       "myapp",
				Connectors: []string{"tag:connector"},
				Domains:    []string{"example.com", "*.example.com"},
				Routes:     policyPrefixes("192.0.2.0/24", "2001:db8::/48"),
				Approval:   "auto",
			}},
		},
		{
			name: "normalization",
			in: `[{"routes": ["192.0.2.7", "2001:DB8::1", "2001:db8::1/128", "192.0.2.7/32"],
				"domains": ["Example.COM.", "example.com", "*.Example.com", "BÜCHER.example", "xn--bcher-kva.example"],
				"connectors": ["tag:a", "tag:a", "*"],
				"name": "norm"}]`,
			want: []App{{
				Name:       "norm",
				Connectors: []string{"tag:a", "*"},
				Domains:    []string{"example.com", "*.example.com", "xn--bcher-kva.example"},
				Routes:     policyPrefixes("192.0.2.7/32", "2001:db8::1/128"),
				Approval:   "auto",
			}},
		},
		{
			name: "routes only and domains only",
			in: `[
				{"name": "r", "connectors": ["*"], "routes": ["0.0.0.0/0", "::/0"], "domains": null},
				{"name": "d", "connectors": ["tag:Edge-1"], "domains": ["_dmarc.example.org", "r3---sn-x.example.net"], "routes": []}
			]`,
			want: []App{
				{Name: "r", Connectors: []string{"*"}, Routes: policyPrefixes("0.0.0.0/0", "::/0"), Approval: "auto"},
				{Name: "d", Connectors: []string{"tag:Edge-1"}, Domains: []string{"_dmarc.example.org", "r3---sn-x.example.net"}, Approval: "auto"},
			},
		},
		{
			name: "unicode name",
			in:   `[{"name": "Büro app 1", "connectors": ["*"], "domains": ["straße.example"]}]`,
			want: []App{{Name: "Büro app 1", Connectors: []string{"*"}, Domains: []string{"xn--strae-oqa.example"}, Approval: "auto"}},
		},
		{
			name: "extension keys",
			in: `[{"name": "x", "connectors": ["*"], "domains": ["corp.example"],
				"approval": "manual",
				"allowPrivate": ["10.0.0.0/8", "10.1.2.3", "fd00::/16", "10.0.0.0/8", "192.168.1.0/24", "0.0.0.0/8"],
				"peers": ["tag:eng", " ` + testPeerKey1 + `\n", "tag:eng", "` + testPeerKey2 + `", "` + testPeerKey1 + `", "tag:Ops-2"]}]`,
			want: []App{{
				Name:         "x",
				Connectors:   []string{"*"},
				Domains:      []string{"corp.example"},
				Approval:     "manual",
				AllowPrivate: policyPrefixes("10.0.0.0/8", "10.1.2.3/32", "fd00::/16", "192.168.1.0/24", "0.0.0.0/8"),
				Peers:        []string{"tag:eng", testPeerKey1, testPeerKey2, "tag:Ops-2"},
			}},
		},
		{
			name: "extension keys null or empty",
			in: `[{"name": "x", "connectors": ["*"], "routes": ["192.0.2.0/24"],
				"approval": null, "allowPrivate": [], "peers": null},
				{"name": "y", "connectors": ["*"], "routes": ["192.0.2.0/24"], "approval": "auto", "allowPrivate": null}]`,
			want: []App{
				{Name: "x", Connectors: []string{"*"}, Routes: policyPrefixes("192.0.2.0/24"), Approval: "auto"},
				{Name: "y", Connectors: []string{"*"}, Routes: policyPrefixes("192.0.2.0/24"), Approval: "auto"},
			},
		},
		{name: "apps object empty", in: `{"apps": []}`},
		{name: "apps object null", in: ` {"apps": null} `},
		{name: "empty object", in: `{}`},
		{
			name: "apps object",
			in:   `{"apps": [{"name": "a", "connectors": ["*"], "routes": ["192.0.2.0/24"]}]}`,
			want: []App{{Name: "a", Connectors: []string{"*"}, Routes: policyPrefixes("192.0.2.0/24"), Approval: "auto"}},
		},
		{
			name: "comments and trailing commas",
			in: `// policy
				[ /* first app */ {"name": "a/*b*/", // "quoted"
				"connectors": ["*",], "routes": ["192.0.2.0/24" /* , */ , ] , },
				/* end */ ]  // done`,
			want: []App{{Name: "a/*b*/", Connectors: []string{"*"}, Routes: policyPrefixes("192.0.2.0/24"), Approval: "auto"}},
		},
		{name: "tailscale without nodeAttrs", in: `{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}], "apps2": 1}`},
		{
			name: "tailscale minimal",
			in: `{"nodeAttrs": [
				{"target": ["*"], "app": null},
				{"app": {"tailscale.com/app-connectors": null, "example.com/cap/x": [{"apps": 1}]}},
				{"app": {"tailscale.com/app-connectors": [{"name": "a", "connectors": ["*"], "routes": ["192.0.2.0/24"]}]}},
				{"target": ["group:b"], "app": {"tailscale.com/app-connectors": [
					{"name": "b", "connectors": ["*"], "routes": ["192.0.2.0/24"]},
					{"routes": ["192.0.2.0/24"], "connectors": ["*", "*"], "name": "a", "approval": "auto"}]}}
			], "acls": {"ignored": true}, "Groups": null}`,
			want: []App{
				{Name: "a", Connectors: []string{"*"}, Routes: policyPrefixes("192.0.2.0/24"), Approval: "auto"},
				{Name: "b", Connectors: []string{"*"}, Routes: policyPrefixes("192.0.2.0/24"), Approval: "auto"},
			},
		},
		{name: "tailscale nodeAttrs null", in: `{"nodeAttrs": null, "ssh": []}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParsePolicy("p.json", []byte(tt.in))
			if err != nil {
				t.Fatalf("ParsePolicy: %v", err)
			}
			if !reflect.DeepEqual(p.Apps, tt.want) {
				t.Errorf("apps:\n got %+v\nwant %+v", p.Apps, tt.want)
			}
		})
	}
}

func TestLoadPolicy(t *testing.T) {
	p, err := LoadPolicy(filepath.Join("testdata", "policy", "multi.json"))
	if err != nil {
		t.Fatal(err)
	}
	want := []App{
		{
			Name:       "wiki",
			Connectors: []string{"tag:connector", "tag:eu-connector"},
			Domains:    []string{"wiki.example.com", "*.wiki.example.com"},
			Approval:   "auto",
		},
		{
			Name:       "büro",
			Connectors: []string{"*"},
			Domains:    []string{"xn--bcher-kva.example", "*.xn--cole-9oa.example", "xn--zca.example", "_dmarc.example.org"},
			Routes:     policyPrefixes("198.51.100.7/32", "203.0.113.0/25", "203.0.113.128/25", "2001:db8:0:1::/64"),
			Approval:   "auto",
		},
		{
			Name:       "everything",
			Connectors: []string{"tag:exit"},
			Routes:     policyPrefixes("0.0.0.0/0", "::/0"),
			Approval:   "auto",
		},
	}
	if !reflect.DeepEqual(p.Apps, want) {
		t.Errorf("apps:\n got %+v\nwant %+v", p.Apps, want)
	}

	path := filepath.Join("testdata", "policy", "host-bits.json")
	_, err = LoadPolicy(path)
	want1 := path + `:6:7: app "myapp": routes: "192.0.2.1/24": host bits set (did you mean 192.0.2.0/24?)`
	if err == nil || err.Error() != want1 {
		t.Errorf("LoadPolicy(%s) = %v, want %s", path, err, want1)
	}

	_, err = LoadPolicy(filepath.Join(t.TempDir(), "missing.json"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadPolicy(missing) = %v, want fs.ErrNotExist", err)
	}
}

func TestLoadPolicyForms(t *testing.T) {
	p, err := LoadPolicy(filepath.Join("testdata", "policy", "tailscale.hujson"))
	if err != nil {
		t.Fatal(err)
	}
	want := []App{
		{
			Name:       "wiki",
			Connectors: []string{"tag:connector"},
			Domains:    []string{"wiki.example.com", "*.wiki.example.com"},
			Approval:   "auto",
		},
		{
			Name:         "build farm",
			Connectors:   []string{"tag:connector", "tag:eu-connector"},
			Domains:      []string{"build.corp.example"},
			Routes:       policyPrefixes("10.20.0.0/16", "192.168.7.0/24"),
			Approval:     "manual",
			AllowPrivate: policyPrefixes("10.20.0.0/16", "fd00:20::/48"),
			Peers:        []string{"tag:eng", testPeerKey1},
		},
	}
	if !reflect.DeepEqual(p.Apps, want) {
		t.Errorf("tailscale.hujson apps:\n got %+v\nwant %+v", p.Apps, want)
	}

	// The same apps in each of the three forms parse the same.
	arrayForm, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	for name, text := range map[string]string{
		"array":      string(arrayForm),
		"apps":       `{"apps": ` + string(arrayForm) + `}`,
		"node attrs": `{"nodeAttrs": [{"app": {"tailscale.com/app-connectors": ` + string(arrayForm) + `}}]}`,
	} {
		q, err := ParsePolicy(name, []byte(text))
		if err != nil || !reflect.DeepEqual(q, p) {
			t.Errorf("%s form: %+v, %v; want %+v", name, q, err, p)
		}
	}

	p, err = LoadPolicy(filepath.Join("testdata", "policy", "apps-object.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Apps) != 1 || p.Apps[0].Name != "myapp" || len(p.Apps[0].Routes) != 2 {
		t.Errorf("apps-object.json apps = %+v", p.Apps)
	}
}

// TestTailscalePolicyErrors breaks the realistic Tailscale policy file in
// different places and checks that errors point at the break.
func TestTailscalePolicyErrors(t *testing.T) {
	path := filepath.Join("testdata", "policy", "tailscale.hujson")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	good := string(data)
	tests := []struct {
		name     string
		old, new string // replace the only old in the file with new
		at       string // the error is at this part of new
		want     string // the rest of the message
	}{
		{"route in second app", `"192.168.7.0/24"`, `"192.168.7.1/24"`, `"192.168.7.1/24"`,
			`app "build farm": routes: "192.168.7.1/24": host bits set (did you mean 192.168.7.0/24?)`},
		{"unknown key in first app", `"domains":    ["Wiki`, `"domain":     ["Wiki`, `"domain"`,
			`app "wiki": domain: unknown key`},
		{"approval", `"manual"`, `"later"`, `"later"`, `app "build farm": approval: "later": want "auto" or "manual"`},
		{"allowPrivate", `"fd00:20::/48"`, `"fd00::/8"`, `"fd00::/8"`,
			`app "build farm": allowPrivate: "fd00::/8": allowPrivate prefix fd00::/8 is too broad; name the internal ranges`},
		{"peers", `["tag:eng", `, `["tag:eng", "*", `, `"*"`,
			`app "build farm": peers: "*": "*" is not allowed here`},
		{"same name", `"name":         "build farm"`, `"name":         "wiki"`, `"wiki"`,
			`app "wiki": name: "wiki": duplicate app name with a different definition (first defined on line 53)`},
		{"missing connectors", `"connectors": ["tag:connector"],`, `"connector": ["tag:connector"],`, `"connector"`,
			`app "wiki": connector: unknown key`},
		{"unterminated comment", `/* the old farm: */`, `/* the old farm:  `, `/* the old farm`,
			`block comment "/*" is never closed with "*/"`},
		{"syntax error after comments", `"attr":   ["funnel"],`, `"attr":   ["funnel"] "x",`, `"x"`,
			`invalid character '"' after object value (expecting ',' or '}')`},
		{"both forms", `"tests": [`, `"apps": [], "tests": [`, `"apps"`, `both "apps" and "nodeAttrs"`},
		{"second entry app", `"attr":   ["funnel"],`, `"attr":   ["funnel"], "app": {"tailscale.com/app-connectors": 1},`, `1}`,
			`tailscale.com/app-connectors: want a list of apps, got number`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if strings.Count(good, tt.old) != 1 {
				t.Fatalf("%q is not in the file exactly once", tt.old)
			}
			text := strings.Replace(good, tt.old, tt.new, 1)
			at := strings.Index(tt.new, tt.at)
			if at < 0 {
				t.Fatalf("%q is not in %q", tt.at, tt.new)
			}
			off := strings.Index(good, tt.old) + at
			line := 1 + strings.Count(text[:off], "\n")
			col := off - strings.LastIndex(text[:off], "\n")
			_, err := ParsePolicy(path, []byte(text))
			want := fmt.Sprintf("%s:%d:%d: %s", path, line, col, tt.want)
			if err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Errorf("error %v\nwant %s", err, want)
			}
		})
	}
}

func TestAppPeerAllowed(t *testing.T) {
	open := &App{Name: "open"}
	limited := &App{Name: "limited", Peers: []string{"tag:eng", testPeerKey1}}
	tests := []struct {
		app  *App
		key  string
		tags []string
		want bool
	}{
		{open, testPeerKey2, nil, true},
		{open, "", nil, true},
		{limited, testPeerKey1, nil, true},
		{limited, testPeerKey2, nil, false},
		{limited, testPeerKey2, []string{"tag:ops", "tag:eng"}, true},
		{limited, testPeerKey2, []string{"tag:ops", "tag:Eng"}, false},
		{limited, "tag:eng", nil, false}, // a key never matches a tag entry
		{limited, "", []string{testPeerKey1}, false},
		{nil, testPeerKey1, nil, false},
	}
	for _, tt := range tests {
		if got := tt.app.PeerAllowed(tt.key, tt.tags); got != tt.want {
			t.Errorf("%+v.PeerAllowed(%q, %q) = %v, want %v", tt.app, tt.key, tt.tags, got, tt.want)
		}
	}
}

// policyListCase builds a file whose app "a" has key holding a list whose second
// entry, on line 7 column 7, is entry.
func policyListCase(key, entry string) string {
	conn, first, other := `"connectors": ["*"],`, `"192.0.2.0/24"`, `"domains": ["example.com"]`
	switch key {
	case "domains":
		first, other = `"example.com"`, `"routes": ["192.0.2.0/24"]`
	case "connectors":
		conn, first = `"domains": ["example.com"],`, `"*"`
	case "allowPrivate":
		first = `"10.0.0.0/8"`
	case "peers":
		first = `"tag:eng"`
	}
	return fmt.Sprintf(`[
  {
    "name": "a",
    %s
    %q: [
      %s,
      %s
    ],
    %s
  }
]`, conn, key, first, entry, other)
}

func TestParsePolicyErrors(t *testing.T) {
	long := strings.Repeat("n", 65)
	label64 := strings.Repeat("l", 64)
	name254 := strings.Repeat(strings.Repeat("d", 62)+".", 4) + "example" // 4*63+7 = 259
	tests := []struct {
		name      string
		in        string
		line, col int
		want      []string // substrings of the message
	}{
		// Syntax and structure.
		{"missing comma", "[\n  {\"name\": \"a\"\n   \"connectors\": [\"*\"]}\n]", 3, 4, []string{"invalid character"}},
		{"truncated", "[\n  {\"name\": \"a\",\n", 3, 1, []string{"unexpected end of JSON input"}},
		{"trailing data", "[]\n[]\n", 2, 1, []string{"after top-level value"}},
		{"empty file", "", 1, 1, []string{"unexpected end of JSON input"}},
		{"top-level string", ` "x"`, 1, 2, []string{`must be a JSON array of apps, an object with "apps" or a Tailscale policy file, got string`}},
		{"top-level number", "// n\n7", 2, 1, []string{"got number"}},
		{"app not object", "[\n  \"myapp\"\n]", 2, 3, []string{"app #1: must be a JSON object, got string"}},
		{"app null", "[\n  null\n]", 2, 3, []string{"app #1", "got null"}},

		// Keys.
		{"unknown key", "[\n  {\n    \"name\": \"myapp\",\n    \"connectors\": [\"*\"],\n    \"domains\": [\"example.com\"],\n    \"owner\": \"it\"\n  }\n]",
			6, 5, []string{`app "myapp"`, "owner: unknown key", "(want allowPrivate, approval, connectors, domains, name, peers, prefetch, routes)"}},
		{"key case matters", "[\n  {\n    \"Name\": \"myapp\",\n    \"name\": \"myapp\"\n  }\n]",
			3, 5, []string{`app "myapp"`, "Name: unknown key"}},
		{"duplicate key", "[\n  {\n    \"name\": \"myapp\",\n    \"connectors\": [\"*\"],\n    \"routes\": [\"192.0.2.0/24\"],\n    \"routes\": [\"198.51.100.0/24\"]\n  }\n]",
			6, 5, []string{`app "myapp"`, "routes: duplicate key (first on line 5)"}},

		// prefetch.
		{"prefetch not a bool", "[\n  {\"name\": \"a\", \"connectors\": [\"*\"], \"domains\": [\"a.example\"], \"prefetch\": \"yes\"}\n]",
			2, 76, []string{`app "a"`, `prefetch: want true or false, got string "yes"`}},

		// name.
		{"name missing", "[\n  {\"connectors\": [\"*\"], \"routes\": [\"192.0.2.0/24\"]}\n]", 2, 3, []string{"app #1: name: missing required key"}},
		{"name null", "[\n  {\"name\": null, \"connectors\": [\"*\"], \"routes\": [\"192.0.2.0/24\"]}\n]", 2, 3, []string{"app #1: name: missing required key"}},
		{"name missing second app", "[\n  {\"name\": \"a\", \"connectors\": [\"*\"], \"routes\": [\"192.0.2.0/24\"]},\n  {\"connectors\": [\"*\"]}\n]",
			3, 3, []string{"app #2: name: missing"}},
		{"name empty", "[\n  {\n    \"name\": \"\",\n    \"connectors\": [\"*\"]\n  }\n]", 3, 13, []string{"app #1: name: must not be empty"}},
		{"name too long", "[\n  {\n    \"name\": \"" + long + "\"\n  }\n]", 3, 13, []string{"app #1: name: \"" + long + "\"", "65 characters long, more than 64"}},
		{"name unprintable", "[\n  {\n    \"name\": \"a\\u0007b\"\n  }\n]", 3, 13, []string{`app #1: name: "a\ab"`, "unprintable character U+0007"}},
		{"name leading space", "[\n  {\n    \"name\": \" a\"\n  }\n]", 3, 13, []string{`app #1: name: " a"`, "leading or trailing space"}},
		{"name not string", "[\n  {\n    \"name\": 7\n  }\n]", 3, 13, []string{"app #1: name: want a string, got number 7"}},
		{"name duplicate", "[\n  {\"name\": \"a\", \"connectors\": [\"*\"], \"routes\": [\"192.0.2.0/24\"]},\n  {\"name\": \"a\", \"connectors\": [\"*\"], \"routes\": [\"192.0.2.0/24\"]}\n]",
			3, 12, []string{`app "a": name: "a": duplicate app name (first defined on line 2)`}},

		// connectors.
		{"connectors missing", "[\n  {\"name\": \"a\", \"routes\": [\"192.0.2.0/24\"]}\n]", 2, 3, []string{`app "a": connectors: missing required key`}},
		{"connectors empty", "[\n  {\n    \"name\": \"a\",\n    \"connectors\": [],\n    \"routes\": [\"192.0.2.0/24\"]\n  }\n]",
			4, 5, []string{`app "a": connectors: need at least one connector`}},
		{"connectors null", "[\n  {\n    \"name\": \"a\",\n    \"connectors\": null,\n    \"routes\": [\"192.0.2.0/24\"]\n  }\n]",
			4, 5, []string{`app "a": connectors: need at least one connector`}},
		{"connectors not list", "[\n  {\n    \"name\": \"a\",\n    \"connectors\": \"tag:a\"\n  }\n]",
			4, 19, []string{`app "a": connectors: want a list of strings, got string "tag:a"`}},
		{"connector no tag prefix", policyListCase("connectors", `"connector"`), 7, 7, []string{`app "a": connectors: "connector": want "*" or "tag:<name>"`}},
		{"connector empty tag", policyListCase("connectors", `"tag:"`), 7, 7, []string{`connectors: "tag:": want`}},
		{"connector tag digit first", policyListCase("connectors", `"tag:1abc"`), 7, 7, []string{`connectors: "tag:1abc": want`}},
		{"connector tag underscore", policyListCase("connectors", `"tag:a_b"`), 7, 7, []string{`connectors: "tag:a_b": want`}},
		{"connector upper prefix", policyListCase("connectors", `"TAG:a"`), 7, 7, []string{`connectors: "TAG:a": want`}},
		{"connector double star", policyListCase("connectors", `"**"`), 7, 7, []string{`connectors: "**": want`}},
		{"connector not string", policyListCase("connectors", `5`), 7, 7, []string{`app "a": connectors: entry #2: want a string, got number 5`}},

		// domains.
		{"domains not list", "[\n  {\n    \"name\": \"a\",\n    \"connectors\": [\"*\"],\n    \"domains\": {\"x\": 1}\n  }\n]",
			5, 16, []string{`app "a": domains: want a list of strings, got object`}},
		{"domain not string", policyListCase("domains", `12`), 7, 7, []string{`app "a": domains: entry #2: want a string, got number 12`}},
		{"domain bare tld", policyListCase("domains", `"com"`), 7, 7, []string{`app "a": domains: "com": need at least two labels`}},
		{"domain bare tld dot", policyListCase("domains", `"com."`), 7, 7, []string{`domains: "com.": need at least two labels`}},
		{"domain empty", policyListCase("domains", `""`), 7, 7, []string{`app "a": domains: empty domain name`}},
		{"domain star", policyListCase("domains", `"*"`), 7, 7, []string{`domains: "*": wildcard needs a domain`}},
		{"domain star dot", policyListCase("domains", `"*."`), 7, 7, []string{`domains: "*.": wildcard needs a domain`}},
		{"domain wildcard tld", policyListCase("domains", `"*.com"`), 7, 7, []string{`domains: "*.com": need at least two labels`}},
		{"domain partial wildcard", policyListCase("domains", `"a*.example.com"`), 7, 7, []string{`domains: "a*.example.com": wildcard "*" is allowed only as the whole first label`}},
		{"domain double wildcard", policyListCase("domains", `"*.*.example.com"`), 7, 7, []string{`domains: "*.*.example.com": wildcard`}},
		{"domain inner wildcard", policyListCase("domains", `"example.*.com"`), 7, 7, []string{`domains: "example.*.com": wildcard`}},
		{"domain star star", policyListCase("domains", `"**.example.com"`), 7, 7, []string{`domains: "**.example.com": wildcard`}},
		{"domain leading hyphen", policyListCase("domains", `"-a.example.com"`), 7, 7, []string{`domains: "-a.example.com": label "-a" starts or ends with '-'`}},
		{"domain trailing hyphen", policyListCase("domains", `"a-.example.com"`), 7, 7, []string{`label "a-" starts or ends with '-'`}},
		{"domain empty label", policyListCase("domains", `"a..example.com"`), 7, 7, []string{`domains: "a..example.com": empty label`}},
		{"domain leading dot", policyListCase("domains", `".example.com"`), 7, 7, []string{`domains: ".example.com": empty label`}},
		{"domain two trailing dots", policyListCase("domains", `"example.com.."`), 7, 7, []string{`domains: "example.com..": empty label`}},
		{"domain long label", policyListCase("domains", `"`+label64+`.example.com"`), 7, 7, []string{`domains: "` + label64, "longer than 63 characters"}},
		{"domain too long", policyListCase("domains", `"`+name254+`"`), 7, 7, []string{`domains: "ddddd`, "259 characters long, more than 253"}},
		{"domain ip address", policyListCase("domains", `"192.0.2.1"`), 7, 7, []string{`domains: "192.0.2.1": last label is numeric`}},
		{"domain space", policyListCase("domains", `"exa mple.com"`), 7, 7, []string{`domains: "exa mple.com": label "exa mple" contains ' '`}},
		{"domain slash", policyListCase("domains", `"example.com/x"`), 7, 7, []string{`contains '/'`}},
		{"domain bad punycode", policyListCase("domains", `"xn--abc.example"`), 7, 7, []string{`domains: "xn--abc.example": invalid punycode`}},
		{"domain ascii punycode", policyListCase("domains", `"xn--ab-.example"`), 7, 7, []string{`domains: "xn--ab-.example": label "xn--ab-" starts or ends`}},
		{"domain empty punycode", policyListCase("domains", `"xn--a.example"`), 7, 7, []string{`domains: "xn--a.example": invalid punycode`}},
		{"domain disallowed rune", policyListCase("domains", `"a\ufffdb.example"`), 7, 7, []string{"domains: \"a\ufffdb.example\": invalid internationalized domain name", "U+FFFD"}},
		{"domain unicode hyphen", policyListCase("domains", `"ü-.example"`), 7, 7, []string{`domains: "ü-.example": invalid punycode: label "ü-" breaks the hyphen rules`}},

		// routes.
		{"routes not list", "[\n  {\n    \"name\": \"a\",\n    \"connectors\": [\"*\"],\n    \"routes\": \"192.0.2.0/24\"\n  }\n]",
			5, 15, []string{`app "a": routes: want a list of strings, got string "192.0.2.0/24"`}},
		{"route not string", policyListCase("routes", `true`), 7, 7, []string{`app "a": routes: entry #2: want a string, got boolean true`}},
		{"route host bits", policyListCase("routes", `"192.0.2.1/24"`), 7, 7, []string{`app "a": routes: "192.0.2.1/24": host bits set (did you mean 192.0.2.0/24?)`}},
		{"route host bits v6", policyListCase("routes", `"2001:db8::1/48"`), 7, 7, []string{`routes: "2001:db8::1/48": host bits set (did you mean 2001:db8::/48?)`}},
		{"route mapped prefix", policyListCase("routes", `"::ffff:192.0.2.0/120"`), 7, 7, []string{`routes: "::ffff:192.0.2.0/120": prefix is IPv4-mapped IPv6`, "192.0.2.0/24"}},
		{"route mapped address", policyListCase("routes", `"::ffff:192.0.2.1"`), 7, 7, []string{`routes: "::ffff:192.0.2.1": prefix is IPv4-mapped IPv6`, "192.0.2.1/32"}},
		{"route zone", policyListCase("routes", `"fe80::1%eth0"`), 7, 7, []string{`routes: "fe80::1%eth0": address has an IPv6 zone`}},
		{"route zone prefix", policyListCase("routes", `"fe80::%eth0/64"`), 7, 7, []string{`routes: "fe80::%eth0/64": address has an IPv6 zone`}},
		{"route bits out of range", policyListCase("routes", `"192.0.2.0/33"`), 7, 7, []string{`routes: "192.0.2.0/33": invalid CIDR prefix`}},
		{"route leading zero bits", policyListCase("routes", `"192.0.2.0/024"`), 7, 7, []string{`routes: "192.0.2.0/024": invalid CIDR prefix`}},
		{"route hostname", policyListCase("routes", `"example.com"`), 7, 7, []string{`routes: "example.com": invalid IP address or CIDR prefix`}},
		{"route space", policyListCase("routes", `" 192.0.2.0/24"`), 7, 7, []string{`routes: " 192.0.2.0/24": invalid CIDR prefix`}},
		{"route empty", policyListCase("routes", `""`), 7, 7, []string{`app "a": routes: invalid IP address or CIDR prefix`}},

		// approval.
		{"approval unknown", "[\n  {\n    \"name\": \"a\",\n    \"approval\": \"Manual\"\n  }\n]",
			4, 17, []string{`app "a": approval: "Manual": want "auto" or "manual"`}},
		{"approval empty", "[\n  {\n    \"name\": \"a\",\n    \"approval\": \"\"\n  }\n]",
			4, 17, []string{`app "a": approval: want "auto" or "manual"`}},
		{"approval bool", "[\n  {\n    \"name\": \"a\",\n    \"approval\": true\n  }\n]",
			4, 17, []string{`app "a": approval: want a string, got boolean true`}},

		// allowPrivate.
		{"allowPrivate not list", "[\n  {\n    \"name\": \"a\",\n    \"allowPrivate\": \"10.0.0.0/8\"\n  }\n]",
			4, 21, []string{`app "a": allowPrivate: want a list of strings, got string`}},
		{"allowPrivate not string", policyListCase("allowPrivate", `8`), 7, 7, []string{`app "a": allowPrivate: entry #2: want a string, got number 8`}},
		{"allowPrivate v4 too broad", policyListCase("allowPrivate", `"0.0.0.0/7"`), 7, 7,
			[]string{`app "a": allowPrivate: "0.0.0.0/7": allowPrivate prefix 0.0.0.0/7 is too broad; name the internal ranges`}},
		{"allowPrivate default route", policyListCase("allowPrivate", `"0.0.0.0/0"`), 7, 7, []string{`allowPrivate prefix 0.0.0.0/0 is too broad`}},
		{"allowPrivate v6 too broad", policyListCase("allowPrivate", `"fc00::/7"`), 7, 7, []string{`allowPrivate: "fc00::/7": allowPrivate prefix fc00::/7 is too broad`}},
		{"allowPrivate v6 default", policyListCase("allowPrivate", `"::/0"`), 7, 7, []string{`allowPrivate prefix ::/0 is too broad`}},
		{"allowPrivate host bits", policyListCase("allowPrivate", `"10.1.0.1/16"`), 7, 7, []string{`allowPrivate: "10.1.0.1/16": host bits set (did you mean 10.1.0.0/16?)`}},
		{"allowPrivate mapped", policyListCase("allowPrivate", `"::ffff:10.0.0.0/104"`), 7, 7, []string{`allowPrivate: "::ffff:10.0.0.0/104": prefix is IPv4-mapped IPv6`}},
		{"allowPrivate zone", policyListCase("allowPrivate", `"fe80::1%eth0"`), 7, 7, []string{`IPv6 zone`}},
		{"allowPrivate hostname", policyListCase("allowPrivate", `"corp.example"`), 7, 7, []string{`allowPrivate: "corp.example": invalid IP address or CIDR prefix`}},

		// peers.
		{"peers not list", "[\n  {\n    \"name\": \"a\",\n    \"peers\": \"tag:eng\"\n  }\n]",
			4, 14, []string{`app "a": peers: want a list of strings, got string "tag:eng"`}},
		{"peers empty", "[\n  {\n    \"name\": \"a\",\n    \"connectors\": [\"*\"],\n    \"routes\": [\"192.0.2.0/24\"],\n    \"peers\": [ ]\n  }\n]",
			6, 14, []string{`app "a": peers: empty list would lock every peer out; remove the key to allow all`}},
		{"peers star", policyListCase("peers", `"*"`), 7, 7, []string{`app "a": peers: "*": "*" is not allowed here; remove the "peers" key to allow every peer`}},
		{"peers bad tag", policyListCase("peers", `"tag:1x"`), 7, 7, []string{`peers: "tag:1x": want "tag:<name>"`}},
		{"peers upper tag prefix", policyListCase("peers", `"TAG:eng"`), 7, 7, []string{`peers: "TAG:eng": want "tag:<name>"`}},
		{"peers empty tag", policyListCase("peers", `"tag:"`), 7, 7, []string{`peers: "tag:": want "tag:<name>"`}},
		{"peers other colon", policyListCase("peers", `"group:eng"`), 7, 7, []string{`peers: "group:eng": want a WireGuard public key or "tag:<name>": invalid key: want 44 base64 characters, got 9`}},
		{"peers short key", policyListCase("peers", `"eng"`), 7, 7, []string{`app "a": peers: want a WireGuard public key or "tag:<name>": invalid key: want 44 base64 characters, got 3 (value not shown: it may be a private key)`}},
		{"peers bad base64", policyListCase("peers", `"`+strings.Repeat("!", 43)+`="`), 7, 7, []string{`app "a": peers: want a WireGuard public key`, "not the base64 encoding"}},
		{"peers zero key", policyListCase("peers", `"`+strings.Repeat("A", 43)+`="`), 7, 7, []string{`app "a": peers: the all-zero key is not a peer's public key`}},
		{"peers not string", policyListCase("peers", `null`), 7, 7, []string{`app "a": peers: entry #2: want a string, got null`}},

		// Cross-key requirements.
		{"no domains or routes", "[\n  {\"name\": \"a\", \"connectors\": [\"*\"], \"domains\": [], \"routes\": null}\n]",
			2, 3, []string{`app "a": needs at least one entry in "domains" or "routes"`}},

		// Comments and trailing commas.
		{"unterminated block comment", "[\n  /* one\n  {\"name\": \"a\"} /* two\n]", 2, 3, []string{`block comment "/*" is never closed with "*/"`}},
		{"unterminated comment after string", "[\"/*\"] /*/", 1, 8, []string{"never closed"}},
		{"comment only", "// nothing\n/* here */\n", 3, 1, []string{"unexpected end of JSON input"}},
		{"comma without value", "[\n  ,\n]", 2, 3, []string{"invalid character ','"}},
		{"double trailing comma", "[\n  {\"name\": \"a\"},,\n]", 2, 17, []string{"invalid character ','"}},
		{"trailing comma after colon", "[{\"name\":,}]", 1, 10, []string{"invalid character ','"}},
		{"error after comments", "/* a\n b */ [ // c\n  {\"name\": \"a\", \"connectors\": [\"*\"], /* d */ \"routes\": [\"192.0.2.1/24\",],},\n]",
			3, 57, []string{`app "a": routes: "192.0.2.1/24": host bits set`}},
		{"lone slash", "[ / ]", 1, 3, []string{"invalid character '/'"}},

		// {"apps": ...} form.
		{"apps not list", "{\n  \"apps\": {}\n}", 2, 11, []string{`apps: want a list of apps, got object`}},
		{"apps unknown key", "{\n  \"apps\": [],\n  \"version\": 2\n}", 3, 3, []string{`version: unknown key (an object with "apps" has no other key)`}},
		{"apps duplicate", "{\n  \"apps\": [],\n  \"apps\": []\n}", 3, 3, []string{`apps: duplicate key (first on line 2)`}},
		{"apps and nodeAttrs", "{\n  \"nodeAttrs\": [],\n  \"acls\": [],\n  \"apps\": []\n}", 4, 3,
			[]string{`both "apps" and "nodeAttrs": use either {"apps": [...]} or a Tailscale policy file, not both`}},
		{"apps misspelt", "{\n  \"Apps\": []\n}", 2, 3, []string{`Apps: unknown key (did you mean "apps"?)`}},
		{"apps app error", "{\"apps\": [\n  {\"name\": \"a\", \"connectors\": [\"*\"]}\n]}", 2, 3, []string{`app "a": needs at least one entry`}},
		{"apps duplicate app", "{\"apps\": [\n  {\"name\": \"a\", \"connectors\": [\"*\"], \"routes\": [\"192.0.2.0/24\"]},\n  {\"name\": \"a\", \"connectors\": [\"*\"], \"routes\": [\"192.0.2.0/24\"]}\n]}",
			3, 12, []string{`app "a": name: "a": duplicate app name (first defined on line 2)`}},

		// Tailscale form.
		{"nodeAttrs misspelt", "{\n  \"acls\": [],\n  \"nodeattrs\": []\n}", 3, 3, []string{`nodeattrs: unknown key (did you mean "nodeAttrs"?)`}},
		{"nodeAttrs not list", "{\n  \"nodeAttrs\": {}\n}", 2, 16, []string{`nodeAttrs: want a list of objects, got object`}},
		{"nodeAttrs duplicate", "{\n  \"nodeAttrs\": [],\n  \"nodeAttrs\": []\n}", 3, 3, []string{`nodeAttrs: duplicate key (first on line 2)`}},
		{"nodeAttrs entry not object", "{\"nodeAttrs\": [\n  {},\n  [\"app\"]\n]}", 3, 3, []string{`nodeAttrs: entry #2: want an object, got array`}},
		{"nodeAttrs app not object", "{\"nodeAttrs\": [\n  {\"app\": []}\n]}", 2, 11, []string{`app: want an object, got array`}},
		{"nodeAttrs duplicate app", "{\"nodeAttrs\": [\n  {\"app\": {},\n   \"app\": {}}\n]}", 3, 4, []string{`app: duplicate key (first on line 2)`}},
		{"app-connectors not list", "{\"nodeAttrs\": [\n  {\"app\": {\"tailscale.com/app-connectors\": {}}}\n]}", 2, 44,
			[]string{`tailscale.com/app-connectors: want a list of apps, got object`}},
		{"app-connectors duplicate", "{\"nodeAttrs\": [{\"app\": {\n  \"tailscale.com/app-connectors\": [],\n  \"tailscale.com/app-connectors\": []\n}}]}", 3, 3,
			[]string{`tailscale.com/app-connectors: duplicate key (first on line 2)`}},
		{"tailscale app differs", "{\"nodeAttrs\": [\n  {\"app\": {\"tailscale.com/app-connectors\": [{\"name\": \"a\", \"connectors\": [\"*\"], \"routes\": [\"192.0.2.0/24\"]}]}},\n  {\"app\": {\"tailscale.com/app-connectors\": [{\"name\": \"a\", \"connectors\": [\"*\"], \"routes\": [\"192.0.2.0/25\"]}]}}\n]}",
			3, 54, []string{`app "a": name: "a": duplicate app name with a different definition (first defined on line 2)`}},
		{"tailscale app index", "{\"nodeAttrs\": [\n  {\"app\": {\"tailscale.com/app-connectors\": [{\"name\": \"a\", \"connectors\": [\"*\"], \"routes\": [\"192.0.2.0/24\"]}]}},\n  {\"app\": {\"tailscale.com/app-connectors\": [{\"connectors\": [\"*\"]}]}}\n]}",
			3, 45, []string{`app #2: name: missing required key`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParsePolicy("p.json", []byte(tt.in))
			if err == nil {
				t.Fatalf("ParsePolicy succeeded with %+v; input:\n%s", p, tt.in)
			}
			var pe *PolicyError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v (%T) is not a *PolicyError", err, err)
			}
			if pe.File != "p.json" || pe.Line != tt.line || pe.Col != tt.col {
				t.Errorf("position %s:%d:%d, want p.json:%d:%d", pe.File, pe.Line, pe.Col, tt.line, tt.col)
			}
			msg := err.Error()
			t.Log(msg)
			if prefix := fmt.Sprintf("p.json:%d:%d: ", tt.line, tt.col); !strings.HasPrefix(msg, prefix) {
				t.Errorf("message %q does not start with %q", msg, prefix)
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("message %q does not contain %q", msg, w)
				}
			}
		})
	}
}

func TestPolicyErrorFormat(t *testing.T) {
	cause := errors.New("boom")
	tests := []struct {
		err  *PolicyError
		want string
	}{
		{&PolicyError{File: "f.json", Line: 12, Col: 5, App: "myapp", Index: 3, Key: "routes", Value: "x", Err: cause},
			`f.json:12:5: app "myapp": routes: "x": boom`},
		{&PolicyError{File: "f.json", Index: 3, Key: "name", Err: cause}, `f.json: app #3: name: boom`},
		{&PolicyError{Line: 2, Col: 1, Err: cause}, `line 2:1: boom`},
		{&PolicyError{}, `invalid policy`},
		{&PolicyError{Value: strings.Repeat("é", 50), Err: cause}, `"` + strings.Repeat("é", 40) + `...": boom`},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}

	wrapped := fmt.Errorf("startup: %w", &PolicyError{Err: cause})
	var pe *PolicyError
	if !errors.As(wrapped, &pe) || !errors.Is(wrapped, cause) {
		t.Errorf("errors.As/Is do not see through %v", wrapped)
	}
	_, err := ParsePolicy("x.json", []byte("[}"))
	if !errors.As(err, &pe) || pe.Line != 1 || pe.Col != 2 || err.Error() != "x.json:1:2: invalid character '}' at start of value" {
		t.Errorf("syntax error %v: want a *PolicyError at 1:2", err)
	}
}

func TestNormalizeDomain(t *testing.T) {
	valid := []struct{ in, want string }{
		{"example.com", "example.com"},
		{"EXAMPLE.com.", "example.com"},
		{"*.Example.COM", "*.example.com"},
		{"*.example.com.", "*.example.com"},
		{"a-b.c_d.example", "a-b.c_d.example"},
		{"_dmarc.example.com", "_dmarc.example.com"},
		{"r3---sn-apo3qvuoxuxbt-j5pe.googlevideo.com", "r3---sn-apo3qvuoxuxbt-j5pe.googlevideo.com"},
		{"1.example.com", "1.example.com"},
		{"bücher.example", "xn--bcher-kva.example"},
		{"XN--BCHER-KVA.example", "xn--bcher-kva.example"},
		{"*.Bücher.example", "*.xn--bcher-kva.example"},
		{"ß.example", "xn--zca.example"}, // non-transitional: not "ss"
		{"Ｅｘａｍｐｌｅ。com", "example.com"},   // width and dot mapping
		{"例え.テスト", "xn--r8jz45g.xn--zckzah"},
		{strings.Repeat("a", 63) + ".com", strings.Repeat("a", 63) + ".com"},
	}
	for _, tt := range valid {
		got, err := NormalizeDomain(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("NormalizeDomain(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			continue
		}
		if again, err := NormalizeDomain(got); again != got || err != nil {
			t.Errorf("NormalizeDomain(%q) = %q, %v; not idempotent", got, again, err)
		}
	}
	invalid := []struct{ in, want string }{
		{"", "empty domain name"},
		{"localhost", "two labels"},
		{"*", "wildcard needs a domain"},
		{"*.*", "wildcard"},
		{"a.*", "wildcard"},
		{"*a.example.com", "wildcard"},
		{"a.-b.com", "starts or ends"},
		{"a.b-.com", "starts or ends"},
		{"a.b.123", "numeric"},
		{"a@b.com", "contains '@'"},
		{"xn--.com", "starts or ends"},
		{"xn--abc.com", "invalid punycode"},
		{"\u200d.example", "invalid internationalized domain name"},
	}
	for _, tt := range invalid {
		got, err := NormalizeDomain(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("NormalizeDomain(%q) = %q, %v; want error containing %q", tt.in, got, err, tt.want)
		}
	}
}

func TestPolicyRoutes(t *testing.T) {
	p, err := ParsePolicy("", []byte(`[
		{"name": "a", "connectors": ["*"], "routes": ["203.0.113.0/25", "2001:db8:0:1::/64", "198.51.100.7"]},
		{"name": "b", "connectors": ["*"], "routes": ["2001:db8::/48", "203.0.113.128/25", "198.51.100.0/24"]},
		{"name": "c", "connectors": ["*"], "domains": ["example.com"]}
	]`))
	if err != nil {
		t.Fatal(err)
	}
	want := policyPrefixes("198.51.100.0/24", "203.0.113.0/24", "2001:db8::/48")
	if got := p.Routes(); !slices.Equal(got, want) {
		t.Errorf("Routes() = %v, want %v", got, want)
	}
	set := p.RouteSet()
	for addr, in := range map[string]bool{"203.0.113.200": true, "198.51.101.0": false, "2001:db8:0:ffff::1": true, "2001:db9::": false} {
		if got := set.Contains(netip.MustParseAddr(addr)); got != in {
			t.Errorf("RouteSet().Contains(%s) = %v, want %v", addr, got, in)
		}
	}

	var empty *Policy
	if got := empty.Routes(); got != nil {
		t.Errorf("nil Policy Routes() = %v, want nil", got)
	}
	if got := (&Policy{Apps: []App{{Name: "x", Routes: []netip.Prefix{{}}}}}).Routes(); got != nil {
		t.Errorf("Routes() with an invalid prefix = %v, want nil", got)
	}
}

// randRoutePrefix returns a random prefix from a small corner of the address
// space, so that prefixes of a few dozen overlap and abut often.
func randRoutePrefix(r *rand.Rand) netip.Prefix {
	if r.IntN(2) == 0 {
		a := netip.AddrFrom4([4]byte{10, 0, byte(r.IntN(4)), byte(r.IntN(256))})
		bits := 22 + r.IntN(11)
		if r.IntN(50) == 0 {
			bits = r.IntN(9)
		}
		return netip.PrefixFrom(a, bits).Masked()
	}
	var b [16]byte
	b[0], b[1], b[2], b[3] = 0x20, 0x01, 0x0d, 0xb8
	b[14], b[15] = byte(r.IntN(4)), byte(r.IntN(256))
	bits := 118 + r.IntN(11)
	if r.IntN(50) == 0 {
		bits = r.IntN(33)
	}
	return netip.PrefixFrom(netip.AddrFrom16(b), bits).Masked()
}

// TestPolicyRoutesRandom checks Routes and RouteSet against a slow, obvious
// reference: an address is routed iff some app route contains it.
func TestPolicyRoutesRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for iter := range 300 {
		var p Policy
		var all []netip.Prefix
		for a := range 1 + r.IntN(4) {
			app := App{Name: fmt.Sprint(a), Connectors: []string{"*"}}
			for range r.IntN(12) {
				app.Routes = append(app.Routes, randRoutePrefix(r))
			}
			all = append(all, app.Routes...)
			p.Apps = append(p.Apps, app)
		}
		got := p.Routes()
		set := p.RouteSet()

		for i, q := range got {
			if !q.IsValid() || q != q.Masked() {
				t.Fatalf("iter %d: Routes()[%d] = %v is not a masked prefix", iter, i, q)
			}
			if i == 0 {
				continue
			}
			prev := got[i-1]
			switch {
			case prev.Addr().Is4() && q.Addr().Is6():
			case prev.Addr().Is6() && q.Addr().Is4():
				t.Fatalf("iter %d: IPv6 %v sorted before IPv4 %v", iter, prev, q)
			case !netipx.PrefixLastIP(prev).Less(q.Addr()):
				t.Fatalf("iter %d: %v and %v overlap or are out of order", iter, prev, q)
			case prev.Bits() == q.Bits() && prev.Bits() > 0 &&
				netip.PrefixFrom(prev.Addr(), prev.Bits()-1).Masked() == netip.PrefixFrom(q.Addr(), q.Bits()-1).Masked():
				t.Fatalf("iter %d: siblings %v and %v were not merged", iter, prev, q)
			}
		}

		var probes []netip.Addr
		for _, q := range all {
			first, last := q.Addr(), netipx.PrefixLastIP(q)
			probes = append(probes, first, last, first.Prev(), last.Next())
		}
		for range 200 {
			probes = append(probes, randRoutePrefix(r).Addr())
		}
		for _, a := range probes {
			if !a.IsValid() {
				continue
			}
			want := slices.ContainsFunc(all, func(q netip.Prefix) bool { return q.Contains(a) })
			inRoutes := slices.ContainsFunc(got, func(q netip.Prefix) bool { return q.Contains(a) })
			if inRoutes != want || set.Contains(a) != want {
				t.Fatalf("iter %d: %v: Routes() contains %v, RouteSet() contains %v, want %v\nroutes %v\nout %v",
					iter, a, inRoutes, set.Contains(a), want, all, got)
			}
		}
	}
}

func TestPolicyAppsFor(t *testing.T) {
	p := &Policy{Apps: []App{
		{Name: "a", Connectors: []string{"tag:a"}},
		{Name: "bc", Connectors: []string{"tag:b", "tag:c"}},
		{Name: "all", Connectors: []string{"*"}},
	}}
	tests := []struct {
		tags []string
		want []string
	}{
		{[]string{"tag:a"}, []string{"a", "all"}},
		{[]string{"tag:c", "tag:a"}, []string{"a", "bc", "all"}},
		{[]string{"tag:b"}, []string{"bc", "all"}},
		{[]string{"a"}, []string{"all"}},
		{nil, []string{"all"}},
	}
	for _, tt := range tests {
		var got []string
		for _, app := range p.AppsFor(tt.tags) {
			got = append(got, app.Name)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("AppsFor(%q) = %q, want %q", tt.tags, got, tt.want)
		}
	}
	var nilPolicy *Policy
	if got := nilPolicy.AppsFor([]string{"tag:a"}); got != nil {
		t.Errorf("nil Policy AppsFor = %v, want nil", got)
	}
}

func TestPolicyJSON(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "policy", "example.json"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := ParsePolicy("example.json", data)
	if err != nil {
		t.Fatal(err)
	}
	out, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	const want = `[{"name":"myapp","connectors":["tag:connector"],"domains":["example.com","*.example.com"],"routes":["192.0.2.0/24","2001:db8::/48"]}]`
	if string(out) != want {
		t.Errorf("Marshal = %s, want %s", out, want)
	}
	if out, _ := json.Marshal(Policy{}); string(out) != "[]" {
		t.Errorf("Marshal(Policy{}) = %s, want []", out)
	}

	ext, err := ParsePolicy("ext.json", []byte(`[
		{"name": "m", "connectors": ["*"], "domains": ["corp.example"], "approval": "manual",
		 "allowPrivate": ["10.0.0.0/8"], "peers": ["tag:eng", "`+testPeerKey2+`"]},
		{"name": "a", "connectors": ["*"], "domains": ["example.com"], "approval": "auto", "allowPrivate": [], "peers": null}]`))
	if err != nil {
		t.Fatal(err)
	}
	out, err = json.Marshal(ext)
	if err != nil {
		t.Fatal(err)
	}
	const wantExt = `[{"name":"m","connectors":["*"],"domains":["corp.example"],"routes":null,"approval":"manual","allowPrivate":["10.0.0.0/8"],"peers":["tag:eng","` + testPeerKey2 + `"]},` +
		`{"name":"a","connectors":["*"],"domains":["example.com"],"routes":null}]`
	if string(out) != wantExt {
		t.Errorf("Marshal = %s\nwant %s", out, wantExt)
	}
	if back, err := ParsePolicy("out.json", out); err != nil || !reflect.DeepEqual(back, ext) {
		t.Errorf("reparse = %+v, %v; want %+v", back, err, ext)
	}

	var cfg struct{ Policy Policy }
	if err := json.Unmarshal([]byte(`{"Policy": `+string(data)+`}`), &cfg); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&cfg.Policy, p) {
		t.Errorf("Unmarshal = %+v, want %+v", cfg.Policy, p)
	}
	if err := json.Unmarshal([]byte(`{"Policy": null}`), &cfg); err != nil || len(cfg.Policy.Apps) != 1 {
		t.Errorf("Unmarshal(null) = %v, %+v; want no error and no change", err, cfg.Policy)
	}
	err = json.Unmarshal([]byte(`{"Policy": [{"name": "x", "connectors": ["*"], "routes": ["1.2.3.4/8"]}]}`), &cfg)
	var pe *PolicyError
	if !errors.As(err, &pe) || pe.Key != "routes" {
		t.Errorf("Unmarshal(bad) = %v, want *PolicyError about routes", err)
	}
}

func addPolicySeeds(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "policy", "*.json"))
	hujson, err2 := filepath.Glob(filepath.Join("testdata", "policy", "*.hujson"))
	files = append(files, hujson...)
	if err != nil || err2 != nil || len(hujson) == 0 {
		f.Fatalf("no seed files: %v, %v", err, err2)
	}
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{
		"", "null", "[]", "[null]", "[{}]", "[1] [", `[{"name":"a","name":"a"}]`,
		`[{"name":"a","connectors":["*"],"domains":["*.ÉCOLE.example.","ß.de","xn--zca.de"]}]`,
		`[{"name":"a","connectors":["tag:x"],"routes":["::ffff:1.2.3.4","fe80::1%x","10.0.0.1/8","::/0"]}]`,
		`[{"name":"a","connectors":["*"],"domains":["a.example"],"approval":"manual","allowPrivate":["10.1.2.3","fd00::/16","0.0.0.0/0"],` +
			`"peers":["tag:a","tag:a"," ` + testPeerKey1 + `","*",""]}]`,
		`[{"name":"a","connectors":["*"],"routes":["10.0.0.0/8"],"peers":[],"approval":"Auto"}]`,
		"// c\n[/* c */{\"name\":\"a\",\"connectors\":[\"*\",],\"routes\":[\"10.0.0.0/8\",],},]",
		"[\"/*\", \"//\", \"\\\"//\"] /* x", "[1,,]", "[,]", `{"a":,}`,
		`{"apps":[]}`, `{"apps":null,"x":1}`, `{"apps":[],"nodeAttrs":[]}`, `{"Apps":[]}`, `{}`,
		`{"acls":[],"nodeAttrs":[{"target":["*"],"app":{"tailscale.com/app-connectors":[{"name":"a","connectors":["*"],"routes":["10.0.0.0/8"]}]}},` +
			`{"attr":["funnel"]},{"app":{"tailscale.com/app-connectors":[{"name":"a","connectors":["*"],"routes":["10.0.0.0/8"]}]}}]}`,
		`{"nodeAttrs":[{"app":{"tailscale.com/app-connectors":{}}},null]}`,
	} {
		f.Add([]byte(s))
	}
}

func FuzzParsePolicy(f *testing.F) {
	addPolicySeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParsePolicy("fuzz.json", data)
		if err != nil {
			var pe *PolicyError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v (%T) is not a *PolicyError", err, err)
			}
			if pe.Err == nil || pe.Line < 1 || pe.Col < 1 {
				t.Fatalf("error %#v lacks a cause or position", pe)
			}
			_ = pe.Error()
			return
		}
		out, err := json.Marshal(p)
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		q, err := ParsePolicy("remarshaled.json", out)
		if err != nil {
			t.Fatalf("reparse of %s: %v", out, err)
		}
		if !reflect.DeepEqual(p, q) {
			t.Fatalf("reparse differs:\n got %+v\nwant %+v", q, p)
		}
		set := p.RouteSet()
		for _, app := range p.Apps {
			for _, r := range app.Routes {
				if !set.ContainsPrefix(r) {
					t.Fatalf("RouteSet() lacks %v", r)
				}
			}
			if app.Approval != ApprovalAuto && app.Approval != ApprovalManual {
				t.Fatalf("app %q: approval %q", app.Name, app.Approval)
			}
			for _, r := range app.AllowPrivate {
				if r != r.Masked() || r.Bits() < 8 || r.Addr().Is6() && r.Bits() < 16 {
					t.Fatalf("app %q: allowPrivate %v", app.Name, r)
				}
			}
			if app.Peers != nil && len(app.Peers) == 0 {
				t.Fatalf("app %q: empty non-nil peers", app.Name)
			}
			for _, sel := range app.Peers {
				if !app.PeerAllowed(sel, nil) && !app.PeerAllowed("", []string{sel}) {
					t.Fatalf("app %q: peer %q not allowed", app.Name, sel)
				}
			}
		}
	})
}

func FuzzNormalizeDomain(f *testing.F) {
	for _, s := range []string{"example.com", "*.Bücher.example.", "xn--zca.de", "_a.b-c.example", "Ｅｘａｍｐｌｅ。com", "a*.b", "xn--.a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := NormalizeDomain(s)
		if err != nil {
			return
		}
		if !isASCII(d) || len(d) > 253 || strings.HasSuffix(d, ".") {
			t.Fatalf("NormalizeDomain(%q) = %q: not a canonical name", s, d)
		}
		if again, err := NormalizeDomain(d); again != d || err != nil {
			t.Fatalf("NormalizeDomain(%q) = %q, but NormalizeDomain(%q) = %q, %v", s, d, d, again, err)
		}
	})
}
