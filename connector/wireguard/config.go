package wireguard

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Config is one WireGuard interface and its peers, as in a wg-quick file.
type Config struct {
	Interface Interface // the [Interface] section
	Peers     []Peer    // the [Peer] sections, in file order
}

// Interface is the [Interface] section of a wg-quick file.
type Interface struct {
	// PrivateKey is the interface's Curve25519 private key. Required.
	PrivateKey Key
	// Addresses are the interface's own addresses ("Address"), IPv4 and
	// IPv6. Host bits are kept: 10.0.0.1/24 is address 10.0.0.1 on
	// 10.0.0.0/24. A bare IP in the file becomes a /32 or /128.
	Addresses []netip.Prefix
	// ListenPort is the UDP port to listen on; 0 picks a random port.
	ListenPort uint16
	// MTU is the tunnel MTU; 0 means the default. When set it is in
	// 576..65535, and at least 1280 if any address is IPv6.
	MTU int
	// DNS are the name servers a client sends its questions to ("DNS",
	// the IP entries); for an appconnector client these are the
	// connectors' tunnel addresses. A connector ignores them.
	DNS []netip.Addr
	// DNSSearch are the search domains of "DNS" (its non-IP entries),
	// kept so a file round-trips; nothing uses them.
	DNSSearch []string
}

// Peer is a [Peer] section of a wg-quick file.
//
// Tags is an appconnector extension: a file that sets it is no longer a
// stock wg-quick file, as wg(8) and wg-quick(8) reject the unknown key.
type Peer struct {
	// PublicKey is the peer's Curve25519 public key. Required, unique
	// among peers, and not the interface's own public key.
	PublicKey Key
	// PresharedKey is an optional symmetric key; the zero Key means none.
	PresharedKey Key
	// AllowedIPs are the addresses routed to and accepted from the peer.
	// Parse masks them as wg(8) does: 10.0.0.5/24 becomes 10.0.0.0/24.
	AllowedIPs []netip.Prefix
	// Endpoint is "host:port" or "[ipv6]:port" as written, or empty for
	// none. The host may be a DNS name; Config.UAPI resolves it.
	Endpoint string
	// PersistentKeepalive is the keepalive interval in seconds; 0 is off.
	PersistentKeepalive uint16
	// Tags are the peer's tags ("Tags = tag:eng, tag:ops"), which app
	// policies use to select peers. Each is "tag:" followed by an ASCII
	// letter and then ASCII letters, digits or '-'; there are no
	// duplicates. The key may repeat; Parse keeps the first occurrence of
	// each tag in file order. Tags are never sent to WireGuard (UAPI).
	Tags []string
}

// Warning reports a key that is valid in a wg-quick file but has no meaning
// for a userspace connector; the key is accepted and ignored.
type Warning struct {
	File string // file name as given to Parse or Load
	Line int    // 1-based line number
	Key  string // canonical key name, such as "DNS"
	Msg  string // why it is ignored
}

// String formats the warning as "wg0.conf:4: key DNS ignored: reason".
func (w Warning) String() string {
	return fmt.Sprintf("%s: key %s ignored: %s", position(w.File, w.Line), w.Key, w.Msg)
}

// redacted stands in for the value of a secret key in a ParseError.
const redacted = "(redacted)"

// ParseError is the error type of Parse (and of Load once the file is read).
// Values of PrivateKey, PresharedKey and PublicKey are never included (Value
// is then "(redacted)"), nor are unknown keys' values or unparsable lines.
type ParseError struct {
	File  string // file name as given to Parse or Load
	Line  int    // 1-based line number; 0 if about the whole file
	Key   string // the key, canonical if known, else as written; may be empty
	Value string // the value as written, "(redacted)", or empty
	Err   error  // what is wrong
}

// Error formats the error as `wg0.conf:7: AllowedIPs = "10.0.0.300/32": reason`.
func (e *ParseError) Error() string {
	s := position(e.File, e.Line) + ": "
	switch {
	case e.Key == "":
	case e.Value == "":
		s += printable(e.Key) + ": "
	case e.Value == redacted:
		s += printable(e.Key) + " = " + redacted + ": "
	default:
		s += printable(e.Key) + " = " + strconv.Quote(e.Value) + ": "
	}
	return s + e.Err.Error()
}

// Unwrap returns the underlying error.
func (e *ParseError) Unwrap() error { return e.Err }

// position formats "file:line" for messages.
func position(file string, line int) string {
	if file == "" {
		file = "<input>"
	}
	if line <= 0 {
		return file
	}
	return file + ":" + strconv.Itoa(line)
}

// printable returns s, quoted unless it is a plain name.
func printable(s string) string {
	if strings.Trim(s, hostChars) != "" {
		return strconv.Quote(s)
	}
	return s
}

// Load reads the wg-quick file at path and parses it with Parse, using path
// as the file name in errors and warnings.
func Load(path string) (*Config, []Warning, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("load config: %w", err)
	}
	return Parse(path, data)
}

// Validate reports whether c is usable: a private key, valid addresses and
// allowed IPs, an MTU in range, and peers with distinct public keys other
// than our own, syntactically valid endpoints and valid, distinct tags.
// Every Config returned by Parse is valid; WriteTo and UAPI call Validate
// first.
func (c *Config) Validate() error {
	peer, key, err := c.check()
	switch {
	case err == nil:
		return nil
	case peer < 0:
		return fmt.Errorf("invalid config: [Interface] %s: %w", key, err)
	default:
		return fmt.Errorf("invalid config: peer %d (%v): %s: %w", peer+1, c.Peers[peer].PublicKey, key, err)
	}
}

// check is Validate, returning where the problem is: the index of the peer
// (-1 for the interface) and the canonical key.
func (c *Config) check() (peer int, key string, err error) {
	ifc := &c.Interface
	if ifc.PrivateKey.IsZero() {
		return -1, "PrivateKey", errors.New("missing private key")
	}
	hasV6 := false
	for _, a := range ifc.Addresses {
		if !a.IsValid() {
			return -1, "Address", fmt.Errorf("invalid prefix %v", a)
		}
		hasV6 = hasV6 || a.Addr().Is6()
	}
	switch {
	case ifc.MTU == 0:
	case ifc.MTU < 576 || ifc.MTU > 65535:
		return -1, "MTU", fmt.Errorf("MTU %d out of range 576..65535", ifc.MTU)
	case hasV6 && ifc.MTU < 1280:
		return -1, "MTU", fmt.Errorf("MTU %d is below 1280, the minimum with IPv6 addresses", ifc.MTU)
	}
	own := ifc.PrivateKey.PublicKey()
	seen := make(map[Key]int, len(c.Peers))
	for i, p := range c.Peers {
		first, dup := seen[p.PublicKey]
		switch {
		case p.PublicKey.IsZero():
			return i, "PublicKey", errors.New("missing public key")
		case p.PublicKey == own:
			return i, "PublicKey", errors.New("peer public key is the interface's own public key")
		case dup:
			return i, "PublicKey", fmt.Errorf("duplicate peer public key (also used by peer %d)", first+1)
		}
		seen[p.PublicKey] = i
		for _, a := range p.AllowedIPs {
			if !a.IsValid() {
				return i, "AllowedIPs", fmt.Errorf("invalid prefix %v", a)
			}
		}
		if p.Endpoint != "" {
			if _, _, err := splitEndpoint(p.Endpoint); err != nil {
				return i, "Endpoint", err
			}
		}
		for j, tag := range p.Tags {
			if err := checkTag(tag); err != nil {
				return i, "Tags", err
			}
			if slices.Contains(p.Tags[:j], tag) {
				return i, "Tags", fmt.Errorf("duplicate tag %q", tag)
			}
		}
	}
	return 0, "", nil
}

// checkTag reports whether tag is "tag:" followed by an ASCII letter and
// then ASCII letters, digits or '-'.
func checkTag(tag string) error {
	name, ok := strings.CutPrefix(tag, "tag:")
	if !ok || name == "" || !isASCIILetter(name[0]) || strings.Trim(name, tagNameChars) != "" {
		return fmt.Errorf(`invalid tag %q: want "tag:" followed by a letter and then letters, digits or '-'`, tag)
	}
	return nil
}

// tagNameChars are the characters allowed in the name part of a tag.
const tagNameChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"

func isASCIILetter(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }

// hostChars are the characters allowed in endpoint host name labels.
const hostChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"

// splitEndpoint checks "host:port" or "[ipv6]:port" and returns its parts.
// The host is an IP literal or a DNS name (labels of hostChars, optional
// trailing dot, not all-numeric); an IPv6 literal must be bracketed and may
// carry a zone. The port is decimal, 1..65535.
func splitEndpoint(s string) (host string, port uint16, err error) {
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, errors.New("invalid endpoint: want host:port or [ipv6]:port")
	}
	n, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || n == 0 {
		return "", 0, fmt.Errorf("invalid endpoint port %q: want 1..65535", portStr)
	}
	addr, err := netip.ParseAddr(host)
	switch {
	case strings.HasPrefix(s, "["):
		if err != nil || !addr.Is6() || strings.Trim(addr.Zone(), hostChars+".") != "" {
			return "", 0, fmt.Errorf("invalid endpoint IPv6 address %q", host)
		}
	case err == nil:
	default:
		name := strings.TrimSuffix(host, ".")
		labels := strings.Split(name, ".")
		for _, l := range labels {
			if l == "" || len(l) > 63 || len(name) > 253 || strings.Trim(l, hostChars) != "" {
				return "", 0, fmt.Errorf("invalid endpoint host name %q", host)
			}
		}
		if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
			return "", 0, fmt.Errorf("invalid endpoint IPv4 address %q", host)
		}
	}
	return host, uint16(n), nil
}
