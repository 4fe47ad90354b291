package wireguard

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// keyInfo describes a key that may appear in a wg-quick file.
type keyInfo struct {
	name   string // canonical spelling
	sect   string // the section it belongs in
	ignore string // if set, a wg-quick-only key, and why it is ignored
}

// keys maps lowercase key names to their description.
var keys = map[string]keyInfo{
	"privatekey":          {"PrivateKey", "Interface", ""},
	"address":             {"Address", "Interface", ""},
	"listenport":          {"ListenPort", "Interface", ""},
	"mtu":                 {"MTU", "Interface", ""},
	"dns":                 {"DNS", "Interface", ""},
	"table":               {"Table", "Interface", "the connector installs no kernel routes"},
	"preup":               {"PreUp", "Interface", "hook commands are not run"},
	"postup":              {"PostUp", "Interface", "hook commands are not run"},
	"predown":             {"PreDown", "Interface", "hook commands are not run"},
	"postdown":            {"PostDown", "Interface", "hook commands are not run"},
	"saveconfig":          {"SaveConfig", "Interface", "the connector never writes the file back"},
	"fwmark":              {"FwMark", "Interface", "the connector sets no socket marks"},
	"publickey":           {"PublicKey", "Peer", ""},
	"presharedkey":        {"PresharedKey", "Peer", ""},
	"allowedips":          {"AllowedIPs", "Peer", ""},
	"endpoint":            {"Endpoint", "Peer", ""},
	"persistentkeepalive": {"PersistentKeepalive", "Peer", ""},
	"tags":                {"Tags", "Peer", ""}, // appconnector extension
}

// repeatable lists the keys that may appear more than once in a section,
// each occurrence adding to a list.
var repeatable = map[string]bool{"Address": true, "AllowedIPs": true, "Tags": true, "DNS": true}

// nameLike reports whether s could be a key or section name, so that an
// error may show it: up to 32 ASCII letters, digits, '_', '-' and spaces.
// Anything else, such as a pasted base64 key, is not shown. Being ASCII,
// such names also compare case-insensitively like strcasecmp in wg(8): no
// non-ASCII rune (such as the Kelvin sign) can fold onto a key name.
func nameLike(s string) bool {
	return s != "" && len(s) <= 32 && strings.Trim(s, hostChars+" ") == ""
}

// parser holds the state of one Parse call. Line numbers of headers and keys
// let errors found after the whole file is read point at the right line.
type parser struct {
	file     string
	cfg      Config
	warnings []Warning

	sect      string           // current section name: "", "Interface" or "Peer"
	seen      map[string]int   // canonical key → line, in the current section
	ifaceLine int              // line of [Interface]; 0 until seen
	ifaceKeys map[string]int   // canonical key → line, in [Interface]
	peerLines []int            // line of each [Peer] header
	peerKeys  []map[string]int // canonical key → line, per peer
}

// Parse parses wg-quick(8) configuration text; filename is used only in
// errors and warnings. There must be exactly one [Interface] section and may
// be any number of [Peer] sections. Section and key names are
// case-insensitive, '#' starts a comment anywhere on a line, and CRLF line
// ends and a leading UTF-8 byte order mark are accepted. Address,
// AllowedIPs and Tags take comma-separated lists and may repeat; other keys
// may not. Tags, an appconnector extension, is described on Peer.
//
// Keys that only wg-quick acts on give one Warning per occurrence. Any other
// unknown key, a key outside a section, or an invalid value is an error.
// Every error is a *ParseError naming the file and line; on error the config
// and warnings are nil. A Config returned by Parse passes Validate.
func Parse(filename string, data []byte) (*Config, []Warning, error) {
	p := &parser{file: filename}
	n := 0
	for line := range strings.Lines(strings.TrimPrefix(string(data), "\ufeff")) {
		n++
		if err := p.line(n, line); err != nil {
			return nil, nil, err
		}
	}
	if err := p.finish(); err != nil {
		return nil, nil, err
	}
	return &p.cfg, p.warnings, nil
}

// errorf returns a *ParseError. Values of key fields are redacted: besides
// the secret ones, a malformed PublicKey may be a misplaced private key.
func (p *parser) errorf(line int, key, value string, format string, args ...any) error {
	if strings.HasSuffix(key, "Key") && value != "" {
		value = redacted
	}
	return &ParseError{File: p.file, Line: line, Key: key, Value: value, Err: fmt.Errorf(format, args...)}
}

// line handles line n of the input.
func (p *parser) line(n int, s string) error {
	if i := strings.IndexByte(s, '#'); i >= 0 {
		s = s[:i]
	}
	s = strings.TrimSpace(s)
	if s == "" {
		return nil
	}
	if strings.HasPrefix(s, "[") {
		return p.header(n, s)
	}
	rawKey, value, ok := strings.Cut(s, "=")
	rawKey, value = strings.TrimSpace(rawKey), strings.TrimSpace(value)
	// Lines and values that are not understood are not echoed in errors:
	// they may be a pasted or misspelt secret.
	if !ok || !nameLike(rawKey) {
		return p.errorf(n, "", "", `expected "Key = Value" or a [Section] header (line not shown: it may hold a secret)`)
	}
	if p.sect == "" {
		return p.errorf(n, rawKey, "", "key outside of any section")
	}
	info, known := keys[strings.ToLower(rawKey)]
	if !known || info.sect != p.sect {
		return p.errorf(n, rawKey, "", "unknown key in [%s] section", p.sect)
	}
	if info.ignore != "" {
		p.warnings = append(p.warnings, Warning{File: p.file, Line: n, Key: info.name, Msg: info.ignore})
		return nil
	}
	if first, dup := p.seen[info.name]; dup && !repeatable[info.name] {
		return p.errorf(n, info.name, "", "duplicate key (first set on line %d)", first)
	}
	p.seen[info.name] = n
	if err := p.set(info.name, value); err != nil {
		return p.errorf(n, info.name, value, "%w", err)
	}
	return nil
}

// header handles a [Section] line.
func (p *parser) header(n int, s string) error {
	if !strings.HasSuffix(s, "]") {
		return p.errorf(n, "", "", "malformed section header: missing ']'")
	}
	p.seen = make(map[string]int)
	name := strings.TrimSpace(s[1 : len(s)-1])
	switch strings.ToLower(name) {
	case "interface":
		if p.ifaceLine != 0 {
			return p.errorf(n, "", "", "duplicate [Interface] section (first on line %d)", p.ifaceLine)
		}
		p.sect, p.ifaceLine, p.ifaceKeys = "Interface", n, p.seen
	case "peer":
		p.sect = "Peer"
		p.cfg.Peers = append(p.cfg.Peers, Peer{})
		p.peerLines = append(p.peerLines, n)
		p.peerKeys = append(p.peerKeys, p.seen)
	default:
		if nameLike(name) {
			return p.errorf(n, "", "", "unknown section [%s]", name)
		}
		return p.errorf(n, "", "", "unknown section")
	}
	return nil
}

// set parses value and stores it under the canonical key.
func (p *parser) set(key, value string) error {
	ifc := &p.cfg.Interface
	var peer *Peer
	if p.sect == "Peer" {
		peer = &p.cfg.Peers[len(p.cfg.Peers)-1]
	}
	var err error
	switch key {
	case "PrivateKey":
		ifc.PrivateKey, err = parseNonZeroKey(value)
	case "Address":
		return parseList(value, &ifc.Addresses, false)
	case "DNS":
		return parseDNS(value, ifc)
	case "ListenPort":
		ifc.ListenPort, err = parseNum(value, 0, "port")
	case "MTU":
		var mtu uint16
		mtu, err = parseNum(value, 576, "MTU") // the IPv6 minimum is checked by finish
		ifc.MTU = int(mtu)
	case "PublicKey":
		peer.PublicKey, err = parseNonZeroKey(value)
	case "PresharedKey":
		peer.PresharedKey, err = ParseKey(value)
	case "AllowedIPs":
		return parseList(value, &peer.AllowedIPs, true)
	case "Endpoint":
		_, _, err = splitEndpoint(value)
		peer.Endpoint = value
	case "PersistentKeepalive":
		if !strings.EqualFold(value, "off") {
			peer.PersistentKeepalive, err = parseNum(value, 0, `interval ("off" or seconds)`)
		}
	case "Tags":
		return parseTags(value, &peer.Tags)
	}
	return err
}

// parseDNS appends the comma-separated DNS servers (IP addresses) and
// search domains (anything else) in value to ifc.
func parseDNS(value string, ifc *Interface) error {
	if value == "" {
		return nil
	}
	for item := range strings.SplitSeq(value, ",") {
		item = strings.TrimSpace(item)
		if a, err := netip.ParseAddr(item); err == nil {
			if a.Zone() != "" {
				return fmt.Errorf("DNS server %q has a zone", item)
			}
			if !slices.Contains(ifc.DNS, a.Unmap()) {
				ifc.DNS = append(ifc.DNS, a.Unmap())
			}
			continue
		}
		if item == "" || strings.Trim(item, hostChars+".") != "" {
			return fmt.Errorf("invalid DNS entry %q: want an IP address or a search domain", item)
		}
		if !slices.Contains(ifc.DNSSearch, item) {
			ifc.DNSSearch = append(ifc.DNSSearch, item)
		}
	}
	return nil
}

// parseTags appends the comma-separated tags in value to *dst, skipping
// those already there. An empty value adds nothing; an empty item is an
// error, as in parseList.
func parseTags(value string, dst *[]string) error {
	if value == "" {
		return nil
	}
	for item := range strings.SplitSeq(value, ",") {
		item = strings.TrimSpace(item)
		if err := checkTag(item); err != nil {
			return err
		}
		if !slices.Contains(*dst, item) {
			*dst = append(*dst, item)
		}
	}
	return nil
}

// parseNum parses a decimal number in lo..65535.
func parseNum(value string, lo uint64, what string) (uint16, error) {
	n, err := strconv.ParseUint(value, 10, 16)
	if err != nil || n < lo {
		return 0, fmt.Errorf("invalid %s: want %d..65535", what, lo)
	}
	return uint16(n), nil
}

// parseNonZeroKey is ParseKey rejecting the all-zero key, which means "none".
func parseNonZeroKey(s string) (Key, error) {
	k, err := ParseKey(s)
	if err == nil && k.IsZero() {
		err = errors.New("invalid key: all zeros")
	}
	return k, err
}

// parseList appends the comma-separated prefixes in value to *dst. An item
// may be "ip/bits" or a bare IP (a /32 or /128); if mask is set host bits
// are cleared, as wg(8) does for AllowedIPs. An empty value adds nothing.
func parseList(value string, dst *[]netip.Prefix, mask bool) error {
	if value == "" {
		return nil
	}
	for item := range strings.SplitSeq(value, ",") {
		item = strings.TrimSpace(item)
		pfx, err := netip.ParsePrefix(item)
		if !strings.Contains(item, "/") {
			var addr netip.Addr
			if addr, err = netip.ParseAddr(item); err == nil && addr.Zone() != "" {
				err = fmt.Errorf("%q has a zone", item)
			}
			pfx = netip.PrefixFrom(addr, addr.BitLen())
		}
		if err != nil {
			return fmt.Errorf("invalid prefix: %w", err)
		}
		if mask {
			pfx = pfx.Masked()
		}
		*dst = append(*dst, pfx)
	}
	return nil
}

// finish runs the checks that need the whole file, reporting problems at
// the line of the offending key, or of its section header if it is missing.
func (p *parser) finish() error {
	if p.ifaceLine == 0 {
		return p.errorf(0, "", "", "no [Interface] section")
	}
	peer, key, err := p.cfg.check()
	if err == nil {
		return nil
	}
	line, seen := p.ifaceLine, p.ifaceKeys
	if peer >= 0 {
		line, seen = p.peerLines[peer], p.peerKeys[peer]
	}
	if keyLine, ok := seen[key]; ok {
		line = keyLine
	}
	return p.errorf(line, key, "", "%w", err)
}
