package apptype

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"go4.org/netipx"
)

// App is one application the connector serves. Values returned by
// ParsePolicy are validated and normalized as described on ParsePolicy.
type App struct {
	// To add a per-app key, add a field here and its parser to appKeys.

	// Name identifies the app in logs and errors. It is unique within a
	// policy, non-empty, printable and at most 64 characters long.
	Name string `json:"name"`

	// Connectors selects the connectors that serve the app: each entry is
	// "tag:<name>", or "*" for every connector. It is never empty and
	// holds no duplicates.
	Connectors []string `json:"connectors"`

	// Domains lists the app's domain names in the canonical form returned
	// by NormalizeDomain: lower-case ASCII with internationalized labels in
	// punycode, no trailing dot, and "*.example.com" for a wildcard. It
	// holds no duplicates and is nil if the app is reached by routes only.
	Domains []string `json:"domains"`

	// Routes lists the address prefixes the app is reached at, masked
	// (no host bits set) and without duplicates. It may overlap with other
	// apps' routes; nil if the app is reached by domains only.
	Routes []netip.Prefix `json:"routes"`

	// Approval says whether routes discovered for the app need an
	// operator's approval: ApprovalAuto (the default) or ApprovalManual.
	// The routes a manual app's domains resolve to wait for approval
	// before they are advertised to peers or forwarded; the prefixes
	// listed in Routes need none. ParsePolicy always sets one of the two
	// values; MarshalJSON leaves out ApprovalAuto.
	Approval string `json:"approval,omitempty"`

	// AllowPrivate lists ranges in which DNS answers for the app's domains
	// may be learned as routes even though they are private, loopback,
	// link-local or otherwise non-public addresses, which are never
	// learned otherwise. It serves internal apps behind split-horizon DNS.
	// Entries follow the rules of Routes and are at least /8 (IPv4) or
	// /16 (IPv6) long; nil if the app learns only public addresses.
	AllowPrivate []netip.Prefix `json:"allowPrivate,omitempty"`

	// Peers restricts the app to the WireGuard peers it selects: only they
	// may resolve the app's domains through the connector and reach its
	// routes. Each entry is a peer's public key in canonical base64 or
	// "tag:<name>", selecting the peers that carry the tag (see
	// the wireguard package's Peer.Tags). Nil means every peer; after ParsePolicy it is
	// never empty but non-nil, and holds no duplicates. See PeerAllowed.
	Peers []string `json:"peers,omitempty"`

	// Prefetch makes the connector resolve the app's exact (non-wildcard)
	// domains itself, at start and again before their routes would
	// expire, so that the routes exist before any peer asks (for stock
	// WireGuard clients, which take them as AllowedIPs and never ask).
	Prefetch bool `json:"prefetch,omitempty"`
}

// Values of App.Approval.
const (
	ApprovalAuto   = "auto"   // discovered routes are used at once
	ApprovalManual = "manual" // discovered routes wait for an operator
)

// PeerAllowed reports whether the peer with public key pubKey (canonical
// base64, as wireguard.Key.String returns it) carrying tags may use the app: true
// if a.Peers is empty, lists pubKey, or lists one of tags. A nil a allows
// no one.
func (a *App) PeerAllowed(pubKey string, tags []string) bool {
	if a == nil {
		return false
	}
	if len(a.Peers) == 0 {
		return true
	}
	for _, sel := range a.Peers {
		if strings.HasPrefix(sel, "tag:") {
			if slices.Contains(tags, sel) {
				return true
			}
		} else if sel == pubKey {
			return true
		}
	}
	return false
}

// MarshalJSON encodes a as an app object of the policy file format,
// leaving out the keys that hold their default value.
func (a App) MarshalJSON() ([]byte, error) {
	type plain App // without methods, so Marshal does not recurse
	if a.Approval == ApprovalAuto {
		a.Approval = ""
	}
	return json.Marshal(plain(a))
}

// Policy is the set of apps an app connector deployment serves.
//
// A Policy is plain data: its methods do not cache anything, so Apps may be
// edited between calls, but not concurrently with them.
type Policy struct {
	Apps []App
}

// PolicyError describes an invalid policy file. Every error returned by
// ParsePolicy is a *PolicyError; fields that do not apply are left zero.
type PolicyError struct {
	File string // file name as passed to ParsePolicy; may be empty
	Line int    // 1-based line of the offending JSON token; 0 if unknown
	Col  int    // 1-based byte column within Line; 0 if unknown

	App   string // name of the app concerned; empty if unnamed or not about one app
	Index int    // 1-based position of that app in the file; 0 if not about one app
	Key   string // app key concerned, such as "routes"; empty if none
	Value string // offending string value; empty if none
	Err   error  // what is wrong; never nil
}

// Error formats e as "file:line:col: app "name": key: "value": problem",
// leaving out the parts that are empty.
func (e *PolicyError) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		fmt.Fprintf(&b, "%s:%d:%d: ", e.File, e.Line, e.Col)
	case e.File != "":
		fmt.Fprintf(&b, "%s: ", e.File)
	case e.Line > 0:
		fmt.Fprintf(&b, "line %d:%d: ", e.Line, e.Col)
	}
	switch {
	case e.App != "":
		fmt.Fprintf(&b, "app %q: ", e.App)
	case e.Index > 0:
		fmt.Fprintf(&b, "app #%d: ", e.Index)
	}
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	if e.Value != "" {
		fmt.Fprintf(&b, "%q: ", excerpt(e.Value))
	}
	if e.Err != nil {
		b.WriteString(e.Err.Error())
	} else {
		b.WriteString("invalid policy")
	}
	return b.String()
}

// Unwrap returns the underlying cause, such as a *json.SyntaxError or the
// error from NormalizeDomain.
func (e *PolicyError) Unwrap() error { return e.Err }

// maxAppNameLen is the longest app name accepted, in characters.
const maxAppNameLen = 64

// appKeys maps each key accepted in an app object to the function that
// decodes and validates its value into the App being built. Keys not listed
// are rejected as unknown; requirements spanning keys are checked in
// parseApp after all keys are read.
var appKeys = map[string]func(ps *policyParser, st *appState, m jsonMember) error{
	"name":         parseAppName,
	"connectors":   parseAppConnectors,
	"domains":      parseAppDomains,
	"routes":       parseAppRoutes,
	"approval":     parseAppApproval,
	"allowPrivate": parseAppAllowPrivate,
	"peers":        parseAppPeers,
	"prefetch":     parseAppPrefetch,
}

// LoadPolicy reads the policy file at path and parses it with ParsePolicy.
func LoadPolicy(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load policy: %w", err)
	}
	return ParsePolicy(path, data)
}

// ParsePolicy parses a policy file. filename is used only in error messages.
//
// The file is JSON, with comments ("//" to the end of the line, "/* */")
// and trailing commas allowed anywhere, as in Tailscale's HuJSON. It lists
// app objects, for example
//
//	[
//	  {
//	    "name": "myapp",
//	    "connectors": ["tag:connector"],
//	    "domains": ["example.com", "*.example.com"],
//	    "routes": ["192.0.2.0/24", "2001:db8::/48"]
//	  }
//	]
//
// in one of three forms, told apart by the top-level value:
//
//   - a JSON array of app objects, as above;
//   - an object whose only key is "apps", holding such an array;
//   - a whole Tailscale policy file: an object without "apps". Only its
//     "nodeAttrs" key is read, a list of objects; the apps are collected,
//     in file order, from the "tailscale.com/app-connectors" list in the
//     "app" object of each entry that has one. All other keys, at the top
//     level and in the entries (such as "acls", "groups", "target" and
//     "attr"), are ignored, so a file without "nodeAttrs" holds no apps.
//     An app repeated with an identical definition, as for another
//     "target", is kept once.
//
// An object with "apps" and any other key is an error, as is a key that
// differs from "apps" or "nodeAttrs" only in case. JSON null, an empty
// array and {} are valid, empty policies. Decoding is strict: unknown and
// duplicate keys in apps, values of the wrong type and data after the
// top-level value are errors. Within an app:
//
//   - "name" is required, unique across apps, non-empty, printable, without
//     leading or trailing spaces and at most 64 characters. Names are
//     compared exactly (case-sensitively).
//   - "connectors" is a required, non-empty list of "*" (every connector) or
//     "tag:<name>", where name is an ASCII letter followed by ASCII letters,
//     digits and '-'. Duplicates are dropped.
//   - "domains" lists domain names, each validated and normalized by
//     NormalizeDomain. Duplicates after normalization are dropped.
//   - "routes" lists CIDR prefixes; a bare address means a single host (/32
//     or /128). Prefixes with host bits set, IPv4-mapped IPv6 prefixes and
//     IPv6 zones are errors. 0.0.0.0/0 and ::/0 are accepted: sending all
//     traffic through the connector is a legitimate, explicit choice.
//     Duplicates are dropped.
//   - An app needs at least one domain or route.
//   - "approval" is "auto" (the default) or "manual"; see App.Approval.
//   - "allowPrivate" lists prefixes as "routes" does, except that IPv4
//     prefixes shorter than /8 and IPv6 ones shorter than /16 are errors.
//   - "peers" lists WireGuard public keys (44 base64 characters, stored in
//     canonical form) and "tag:<name>" entries; "*" is not accepted, since
//     leaving the key out already allows every peer, and neither is an
//     empty list, which would allow no one. Duplicates are dropped.
//   - "prefetch" is true or false (the default); see App.Prefetch.
//
// A null value counts as an absent key. Errors are *PolicyError values
// naming the file, line and column, app, key and offending value; the
// value of a "peers" entry that is neither a key nor a tag is left out, as
// it may be a misplaced private key.
func ParsePolicy(filename string, data []byte) (*Policy, error) {
	ps := &policyParser{file: filename, data: data}
	clean, err := ps.standardize(data)
	if err != nil {
		return nil, err
	}
	// Offsets, lines and columns in clean are those of data.
	ps.data = clean
	// Unmarshal checks the syntax of the whole input, trailing data
	// included, and reports offsets from the start of data.
	if err := json.Unmarshal(clean, new(json.RawMessage)); err != nil {
		return nil, ps.syntaxError(err)
	}
	start := skipJSONSpace(clean, 0)
	top := jsonMember{valOff: start, val: clean[start:]}
	l := &appList{first: make(map[string]appRef)}
	switch clean[start] { // valid JSON has a value after any space
	case 'n':
	case '[':
		err = ps.parseAppList(l, top)
	case '{':
		err = ps.parseTopObject(l, top)
	default:
		err = ps.errAt(start, nil, "", "", fmt.Errorf(
			`policy must be a JSON array of apps, an object with "apps" or a Tailscale policy file, got %s`, jsonKind(top.val)))
	}
	if err != nil {
		return nil, err
	}
	return &Policy{Apps: l.apps}, nil
}

// appList collects the apps of a policy file as they are parsed.
type appList struct {
	apps  []App
	first map[string]appRef // by app name
	count int               // apps seen, including merged repeats

	// mergeEqual makes an app that repeats an earlier definition exactly
	// count once instead of being a duplicate name.
	mergeEqual bool
}

// appRef locates an app kept in an appList.
type appRef struct {
	index   int // in appList.apps
	nameOff int // file offset of its name
}

// parseAppList parses m's value, a list of apps (or null), into l.
func (ps *policyParser) parseAppList(l *appList, m jsonMember) error {
	switch m.val[0] {
	case 'n':
		return nil
	case '[':
	default:
		return ps.errAt(m.valOff, nil, m.key, "", fmt.Errorf("want a list of apps, got %s", jsonKind(m.val)))
	}
	return ps.eachValue(nil, m.val, m.valOff, func(e jsonMember) error {
		l.count++
		st, err := ps.parseApp(l.count, e.valOff, e.val)
		if err != nil {
			return err
		}
		prev, dup := l.first[st.app.Name]
		if !dup {
			l.first[st.app.Name] = appRef{index: len(l.apps), nameOff: st.nameOff}
			l.apps = append(l.apps, st.app)
			return nil
		}
		if l.mergeEqual && reflect.DeepEqual(l.apps[prev.index], st.app) {
			return nil
		}
		what := "duplicate app name"
		if l.mergeEqual {
			what = "duplicate app name with a different definition"
		}
		line, _ := lineCol(ps.data, prev.nameOff)
		return ps.errAt(st.nameOff, st, "name", st.app.Name, fmt.Errorf("%s (first defined on line %d)", what, line))
	})
}

// MarshalJSON encodes p in the policy file format that ParsePolicy reads.
func (p Policy) MarshalJSON() ([]byte, error) {
	if len(p.Apps) == 0 {
		return []byte("[]"), nil
	}
	return json.Marshal(p.Apps)
}

// UnmarshalJSON decodes and validates a policy as ParsePolicy does and
// replaces *p with it; null leaves *p unchanged. Error positions are
// relative to the start of data.
func (p *Policy) UnmarshalJSON(data []byte) error {
	if string(bytes.TrimSpace(data)) == "null" {
		return nil
	}
	q, err := ParsePolicy("", data)
	if err != nil {
		return err
	}
	*p = *q
	return nil
}

// Routes returns the union of all apps' routes as the minimal sorted list of
// prefixes covering it, IPv4 before IPv6. It returns nil if no app has
// routes. The result is computed on each call.
func (p *Policy) Routes() []netip.Prefix {
	routes := p.RouteSet().Prefixes()
	if len(routes) == 0 {
		return nil
	}
	return routes
}

// RouteSet returns the union of all apps' routes as a set, for fast
// containment checks. Invalid (zero) prefixes are ignored. The result is
// computed on each call and is not affected by later changes to p.
func (p *Policy) RouteSet() *netipx.IPSet {
	var b netipx.IPSetBuilder
	if p != nil {
		for _, app := range p.Apps {
			for _, r := range app.Routes {
				if r.IsValid() {
					b.AddPrefix(r)
				}
			}
		}
	}
	// IPSet fails only if an invalid prefix was added, which is excluded above.
	s, _ := b.IPSet()
	return s
}

// AppsFor returns, in policy order, the apps served by a connector carrying
// any of tags (such as "tag:connector"): those whose Connectors list one of
// tags or "*". The returned Apps share their slices with p; callers must not
// modify them.
func (p *Policy) AppsFor(tags []string) []App {
	if p == nil {
		return nil
	}
	var out []App
	for _, app := range p.Apps {
		for _, c := range app.Connectors {
			if c == "*" || slices.Contains(tags, c) {
				out = append(out, app)
				break
			}
		}
	}
	return out
}

// policyParser holds the input for position-aware error reporting.
type policyParser struct {
	file string
	data []byte
}

// appState is an app being parsed.
type appState struct {
	app     App
	index   int             // 1-based position in the file
	label   string          // valid name to show in errors; empty if none yet
	off     int             // offset of the app object
	nameOff int             // offset of the name value
	seen    map[string]bool // list entries kept so far, keyed by key and value
}

// firstSeen reports whether value has not yet been seen under key in this
// app, and records it.
func (st *appState) firstSeen(key, value string) bool {
	k := key + "\x00" + value
	if st.seen[k] {
		return false
	}
	if st.seen == nil {
		st.seen = make(map[string]bool)
	}
	st.seen[k] = true
	return true
}

// parseApp parses and validates the app object raw found at offset off.
func (ps *policyParser) parseApp(index, off int, raw json.RawMessage) (*appState, error) {
	st := &appState{index: index, off: off}
	if raw[0] != '{' {
		return nil, ps.errAt(off, st, "", "", fmt.Errorf("must be a JSON object, got %s", jsonKind(raw)))
	}
	var members []jsonMember
	if err := ps.eachValue(st, raw, off, func(m jsonMember) error {
		members = append(members, m)
		return nil
	}); err != nil {
		return nil, err
	}
	// Label errors with the app's name when it has a valid one, wherever
	// the name appears in the object.
	for _, m := range members {
		var name string
		if m.key == "name" && json.Unmarshal(m.val, &name) == nil && checkAppName(name) == nil {
			st.label = name
			break
		}
	}

	keyOff := make(map[string]int, len(members))
	for _, m := range members {
		if prev, dup := keyOff[m.key]; dup {
			line, _ := lineCol(ps.data, prev)
			return nil, ps.errAt(m.keyOff, st, m.key, "", fmt.Errorf("duplicate key (first on line %d)", line))
		}
		keyOff[m.key] = m.keyOff
		parse, ok := appKeys[m.key]
		if !ok {
			known := slices.Sorted(maps.Keys(appKeys))
			return nil, ps.errAt(m.keyOff, st, m.key, "",
				fmt.Errorf("unknown key (want %s)", strings.Join(known, ", ")))
		}
		if err := parse(ps, st, m); err != nil {
			return nil, err
		}
	}

	missing := errors.New("missing required key")
	a := &st.app
	if a.Name == "" {
		return nil, ps.errAt(off, st, "name", "", missing)
	}
	if len(a.Connectors) == 0 {
		if o, ok := keyOff["connectors"]; ok {
			return nil, ps.errAt(o, st, "connectors", "", errors.New("need at least one connector"))
		}
		return nil, ps.errAt(off, st, "connectors", "", missing)
	}
	if len(a.Domains) == 0 && len(a.Routes) == 0 {
		return nil, ps.errAt(off, st, "", "", errors.New(`needs at least one entry in "domains" or "routes"`))
	}
	if a.Approval == "" {
		a.Approval = ApprovalAuto
	}
	return st, nil
}

func parseAppName(ps *policyParser, st *appState, m jsonMember) error {
	name, ok, err := ps.stringValue(st, m)
	if err != nil || !ok {
		return err // null is reported as missing
	}
	if err := checkAppName(name); err != nil {
		return ps.errAt(m.valOff, st, m.key, name, err)
	}
	st.app.Name, st.nameOff = name, m.valOff
	return nil
}

// checkAppName reports whether name is acceptable as an app name.
func checkAppName(name string) error {
	if name == "" {
		return errors.New("must not be empty")
	}
	if n := utf8.RuneCountInString(name); n > maxAppNameLen {
		return fmt.Errorf("%d characters long, more than %d", n, maxAppNameLen)
	}
	for _, r := range name {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("contains unprintable character %U", r)
		}
	}
	if strings.TrimSpace(name) != name {
		return errors.New("has leading or trailing space")
	}
	return nil
}

func parseAppConnectors(ps *policyParser, st *appState, m jsonMember) error {
	return ps.eachString(st, m, func(off int, s string) error {
		if err := checkConnector(s); err != nil {
			return ps.errAt(off, st, m.key, s, err)
		}
		if st.firstSeen(m.key, s) {
			st.app.Connectors = append(st.app.Connectors, s)
		}
		return nil
	})
}

// tagRE matches a Tailscale-style tag: "tag:" and a name made of a letter
// followed by letters, digits and '-'.
var tagRE = regexp.MustCompile(`^tag:[A-Za-z][A-Za-z0-9-]*$`)

// checkConnector reports whether s is "*" or a valid tag.
func checkConnector(s string) error {
	if s != "*" && !tagRE.MatchString(s) {
		return errors.New(`want "*" or "tag:<name>" where name is a letter followed by letters, digits or '-'`)
	}
	return nil
}

func parseAppDomains(ps *policyParser, st *appState, m jsonMember) error {
	return ps.eachString(st, m, func(off int, s string) error {
		d, err := NormalizeDomain(s)
		if err != nil {
			return ps.errAt(off, st, m.key, s, err)
		}
		if st.firstSeen(m.key, d) {
			st.app.Domains = append(st.app.Domains, d)
		}
		return nil
	})
}

func parseAppRoutes(ps *policyParser, st *appState, m jsonMember) error {
	return ps.eachString(st, m, func(off int, s string) error {
		p, err := parseRoute(s)
		if err != nil {
			return ps.errAt(off, st, m.key, s, err)
		}
		if st.firstSeen(m.key, p.String()) {
			st.app.Routes = append(st.app.Routes, p)
		}
		return nil
	})
}

// parseRoute parses a route entry: a masked CIDR prefix or a bare address.
func parseRoute(s string) (netip.Prefix, error) {
	if strings.Contains(s, "%") {
		return netip.Prefix{}, errors.New("address has an IPv6 zone; zones are not allowed in routes")
	}
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR prefix: %w", err)
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid IP address or CIDR prefix: %w", err)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		v4 := netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96).Masked()
		return netip.Prefix{}, fmt.Errorf("prefix is IPv4-mapped IPv6, which is not allowed (write it as %s)", v4)
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, fmt.Errorf("host bits set (did you mean %s?)", m)
	}
	return p, nil
}

func parseAppApproval(ps *policyParser, st *appState, m jsonMember) error {
	s, ok, err := ps.stringValue(st, m)
	if err != nil || !ok {
		return err
	}
	if s != ApprovalAuto && s != ApprovalManual {
		return ps.errAt(m.valOff, st, m.key, s, fmt.Errorf("want %q or %q", ApprovalAuto, ApprovalManual))
	}
	st.app.Approval = s
	return nil
}

func parseAppPrefetch(ps *policyParser, st *appState, m jsonMember) error {
	switch string(m.val) {
	case "true":
		st.app.Prefetch = true
	case "false", "null":
	default:
		return ps.errAt(m.valOff, st, m.key, "", fmt.Errorf("want true or false, got %s %s", jsonKind(m.val), excerpt(string(m.val))))
	}
	return nil
}

// Shortest allowPrivate prefixes: anything wider names more than the
// internal ranges of one app.
const (
	minAllowPrivateBits4 = 8
	minAllowPrivateBits6 = 16
)

func parseAppAllowPrivate(ps *policyParser, st *appState, m jsonMember) error {
	return ps.eachString(st, m, func(off int, s string) error {
		p, err := parseRoute(s)
		if err == nil && (p.Addr().Is4() && p.Bits() < minAllowPrivateBits4 || p.Addr().Is6() && p.Bits() < minAllowPrivateBits6) {
			err = fmt.Errorf("allowPrivate prefix %s is too broad; name the internal ranges", p)
		}
		if err != nil {
			return ps.errAt(off, st, m.key, s, err)
		}
		if st.firstSeen(m.key, p.String()) {
			st.app.AllowPrivate = append(st.app.AllowPrivate, p)
		}
		return nil
	})
}

func parseAppPeers(ps *policyParser, st *appState, m jsonMember) error {
	err := ps.eachString(st, m, func(off int, s string) error {
		sel, err := parsePeerSelector(s)
		if err != nil {
			// A malformed entry may be a misplaced private key: show
			// only what cannot be part of one.
			if !strings.ContainsAny(s, ":*") {
				s, err = "", fmt.Errorf("%w (value not shown: it may be a private key)", err)
			}
			return ps.errAt(off, st, m.key, s, err)
		}
		if st.firstSeen(m.key, sel) {
			st.app.Peers = append(st.app.Peers, sel)
		}
		return nil
	})
	if err == nil && m.val[0] == '[' && len(st.app.Peers) == 0 {
		err = ps.errAt(m.valOff, st, m.key, "",
			errors.New("empty list would lock every peer out; remove the key to allow all"))
	}
	return err
}

// parsePeerSelector checks a "peers" entry, a tag or a WireGuard public
// key, and returns its canonical form.
func parsePeerSelector(s string) (string, error) {
	switch {
	case s == "*":
		return "", errors.New(`"*" is not allowed here; remove the "peers" key to allow every peer`)
	case strings.HasPrefix(strings.ToLower(s), "tag:"):
		if !tagRE.MatchString(s) {
			return "", errors.New(`want "tag:<name>" where name is a letter followed by letters, digits or '-'`)
		}
		return s, nil
	}
	// A WireGuard public key as wg(8) prints it: 44 characters of padded
	// base64 encoding exactly 32 bytes (the wireguard package's ParseKey
	// reads the same; this package stays a leaf).
	const bad = `want a WireGuard public key or "tag:<name>": invalid key: `
	if s = strings.TrimSpace(s); len(s) != 44 {
		return "", fmt.Errorf(bad+"want 44 base64 characters, got %d", len(s))
	}
	var k [33]byte // base64.StdEncoding.DecodedLen(44): Decode needs the room
	if n, err := base64.StdEncoding.Strict().Decode(k[:], []byte(s)); err != nil || n != 32 {
		return "", errors.New(bad + "not the base64 encoding of 32 bytes")
	}
	if k == ([33]byte{}) {
		return "", errors.New("the all-zero key is not a peer's public key")
	}
	return base64.StdEncoding.EncodeToString(k[:32]), nil
}

// errAt returns a *PolicyError for the token at file offset off about the
// app st (nil if none).
func (ps *policyParser) errAt(off int, st *appState, key, value string, err error) *PolicyError {
	e := &PolicyError{File: ps.file, Key: key, Value: value, Err: err}
	e.Line, e.Col = lineCol(ps.data, off)
	if st != nil {
		e.App, e.Index = st.label, st.index
	}
	return e
}

// syntaxError converts a JSON syntax error to a *PolicyError.
func (ps *policyParser) syntaxError(err error) *PolicyError {
	e := &PolicyError{File: ps.file, Err: err}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		// Offset counts the bytes read up to and including the offending
		// one, or all of them when the input ended early.
		off := int(se.Offset)
		if !strings.HasPrefix(se.Error(), "unexpected end") {
			off--
		}
		e.Line, e.Col = lineCol(ps.data, off)
	}
	return e
}
