package connector

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
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
	"name":       parseAppName,
	"connectors": parseAppConnectors,
	"domains":    parseAppDomains,
	"routes":     parseAppRoutes,
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
// The file is a JSON array of app objects, for example
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
// JSON null and an empty array are valid, empty policies. Decoding is
// strict: unknown and duplicate keys, values of the wrong type and data
// after the array are errors. Within an app:
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
//
// A null value counts as an absent key. Errors are *PolicyError values
// naming the file, line and column, app, key and offending value.
func ParsePolicy(filename string, data []byte) (*Policy, error) {
	ps := &policyParser{file: filename, data: data}
	// Unmarshal checks the syntax of the whole input, trailing data
	// included, and reports offsets from the start of data.
	if err := json.Unmarshal(data, new(json.RawMessage)); err != nil {
		return nil, ps.syntaxError(err)
	}
	start := skipJSONSpace(data, 0)
	switch data[start] { // valid JSON has a value after any space
	case 'n':
		return &Policy{}, nil
	case '[':
	default:
		return nil, ps.errAt(start, nil, "", "",
			fmt.Errorf("policy must be a JSON array of apps, got %s", jsonKind(data[start:])))
	}

	var pol Policy
	firstName := make(map[string]int) // app name -> offset of its first definition
	index := 0
	err := ps.eachValue(nil, data[start:], start, func(m jsonMember) error {
		index++
		st, err := ps.parseApp(index, m.valOff, m.val)
		if err != nil {
			return err
		}
		if prev, dup := firstName[st.app.Name]; dup {
			line, _ := lineCol(data, prev)
			return ps.errAt(st.nameOff, st, "name", st.app.Name,
				fmt.Errorf("duplicate app name (first defined on line %d)", line))
		}
		firstName[st.app.Name] = st.nameOff
		pol.Apps = append(pol.Apps, st.app)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &pol, nil
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

// jsonMember is one key and value of a JSON object, with their offsets.
type jsonMember struct {
	key    string
	keyOff int
	valOff int
	val    json.RawMessage
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
	return st, nil
}

func parseAppName(ps *policyParser, st *appState, m jsonMember) error {
	if m.val[0] == 'n' {
		return nil // null: reported as missing
	}
	if m.val[0] != '"' {
		return ps.errAt(m.valOff, st, m.key, "", wantString(m.val))
	}
	var name string
	if err := json.Unmarshal(m.val, &name); err != nil {
		return ps.errAt(m.valOff, st, m.key, "", err)
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

// eachString calls fn with the offset and value of each element of the list
// of strings in m. A null value is an empty list.
func (ps *policyParser) eachString(st *appState, m jsonMember, fn func(off int, s string) error) error {
	switch m.val[0] {
	case 'n':
		return nil
	case '[':
	default:
		return ps.errAt(m.valOff, st, m.key, "",
			fmt.Errorf("want a list of strings, got %s %s", jsonKind(m.val), excerpt(string(m.val))))
	}
	index := 0
	return ps.eachValue(st, m.val, m.valOff, func(e jsonMember) error {
		index++
		if e.val[0] != '"' {
			return ps.errAt(e.valOff, st, m.key, "", fmt.Errorf("entry #%d: %w", index, wantString(e.val)))
		}
		var s string
		if err := json.Unmarshal(e.val, &s); err != nil {
			return ps.errAt(e.valOff, st, m.key, "", err)
		}
		return fn(e.valOff, s)
	})
}

// eachValue calls fn with each element of the JSON array, or each member of
// the JSON object, raw, which starts at file offset base and must be valid
// JSON. Array elements have an empty key and keyOff equal to valOff.
func (ps *policyParser) eachValue(st *appState, raw []byte, base int, fn func(jsonMember) error) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil { // '[' or '{'
		return ps.errAt(base, st, "", "", err)
	}
	for dec.More() {
		var m jsonMember
		m.keyOff = base + skipJSONSpace(raw, int(dec.InputOffset()))
		if raw[0] == '{' {
			tok, err := dec.Token()
			if err != nil {
				return ps.errAt(m.keyOff, st, "", "", err)
			}
			m.key, _ = tok.(string) // object keys are always strings
		}
		m.valOff = base + skipJSONSpace(raw, int(dec.InputOffset()))
		if err := dec.Decode(&m.val); err != nil {
			return ps.errAt(m.valOff, st, m.key, "", err)
		}
		if err := fn(m); err != nil {
			return err
		}
	}
	return nil
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

// lineCol converts a byte offset in data to a 1-based line and byte column.
// Offsets past the end refer to the position just after the last byte.
func lineCol(data []byte, off int) (line, col int) {
	off = min(max(off, 0), len(data))
	before := data[:off]
	line = 1 + bytes.Count(before, []byte{'\n'})
	col = off - (bytes.LastIndexByte(before, '\n') + 1) + 1
	return line, col
}

// skipJSONSpace returns the offset of the first byte at or after i in data
// that is not JSON white space or a ',' or ':' separator.
func skipJSONSpace(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\r', '\n', ',', ':':
			i++
		default:
			return i
		}
	}
	return i
}

// jsonKinds maps the first byte of a JSON value to the kind of value;
// anything else starts a number.
var jsonKinds = map[byte]string{'"': "string", '{': "object", '[': "array", 't': "boolean", 'f': "boolean", 'n': "null"}

// jsonKind names the kind of the JSON value raw.
func jsonKind(raw []byte) string {
	if k, ok := jsonKinds[raw[0]]; ok {
		return k
	}
	return "number"
}

// wantString returns the error for a non-string JSON value raw.
func wantString(raw []byte) error {
	return fmt.Errorf("want a string, got %s %s", jsonKind(raw), excerpt(string(raw)))
}

// excerpt shortens s for display in an error message.
func excerpt(s string) string {
	const maxLen = 80
	if len(s) <= maxLen {
		return s
	}
	i := maxLen
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "..."
}
