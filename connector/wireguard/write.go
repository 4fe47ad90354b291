package wireguard

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// WriteTo writes c as canonical wg-quick text: [Interface] then one [Peer]
// section per peer, keys in a fixed order with canonical names, lists
// comma-separated and unset values omitted. A peer's Tags are written as
// one Tags key, an appconnector extension (see Peer). AllowedIPs are
// written masked; Address keeps its host bits. Parsing the output gives a
// Config equal to c (for every Config from Parse, whose AllowedIPs are
// masked). c must pass Validate, else nothing is written. The text
// contains the private key.
func (c *Config) WriteTo(w io.Writer) (int64, error) {
	if err := c.Validate(); err != nil {
		return 0, fmt.Errorf("write config: %w", err)
	}
	var b strings.Builder
	kv := func(key string, set bool, value any) {
		if set {
			fmt.Fprintf(&b, "%s = %v\n", key, value)
		}
	}
	ifc := &c.Interface
	b.WriteString("[Interface]\n")
	kv("PrivateKey", true, ifc.PrivateKey)
	kv("Address", len(ifc.Addresses) > 0, joinPrefixes(ifc.Addresses, false))
	kv("DNS", len(ifc.DNS)+len(ifc.DNSSearch) > 0, joinDNS(ifc))
	kv("ListenPort", ifc.ListenPort != 0, ifc.ListenPort)
	kv("MTU", ifc.MTU != 0, ifc.MTU)
	for _, p := range c.Peers {
		b.WriteString("\n[Peer]\n")
		kv("PublicKey", true, p.PublicKey)
		kv("PresharedKey", !p.PresharedKey.IsZero(), p.PresharedKey)
		kv("AllowedIPs", len(p.AllowedIPs) > 0, joinPrefixes(p.AllowedIPs, true))
		kv("Endpoint", p.Endpoint != "", p.Endpoint)
		kv("PersistentKeepalive", p.PersistentKeepalive != 0, p.PersistentKeepalive)
		kv("Tags", len(p.Tags) > 0, strings.Join(p.Tags, ", "))
	}
	n, err := io.WriteString(w, b.String())
	if err != nil {
		return int64(n), fmt.Errorf("write config: %w", err)
	}
	return int64(n), nil
}

// joinPrefixes formats prefixes as "a, b, c", clearing host bits if mask.
func joinPrefixes(ps []netip.Prefix, mask bool) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		if mask {
			p = p.Masked()
		}
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// resolveTimeout bounds each endpoint host name lookup in UAPI.
const resolveTimeout = 10 * time.Second

// UAPI returns c as text for the WireGuard configuration protocol, as
// accepted by wireguard-go's (*device.Device).IpcSet. It replaces all peers
// and each peer's allowed IPs, so applying it makes the device match c
// (an unset ListenPort is not sent: the device keeps its current port).
// Peers' Tags are not part of the protocol and are left out. The text
// contains the private key.
//
// Endpoint host names are resolved with lookup, each lookup bounded by ctx
// and by 10 seconds; a nil lookup uses net.DefaultResolver. The first IPv4
// result is used, else the first IPv6 one. Each name is looked up once.
func (c *Config) UAPI(ctx context.Context, lookup func(ctx context.Context, host string) ([]netip.Addr, error)) (string, error) {
	if err := c.Validate(); err != nil {
		return "", fmt.Errorf("uapi: %w", err)
	}
	if lookup == nil {
		lookup = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}
	}
	var b strings.Builder
	set := func(key string, ok bool, value any) {
		if ok {
			fmt.Fprintf(&b, "%s=%v\n", key, value)
		}
	}
	ifc := &c.Interface
	set("private_key", true, ifc.PrivateKey.Hex())
	set("listen_port", ifc.ListenPort != 0, ifc.ListenPort)
	set("replace_peers", true, true)
	resolved := make(map[string]netip.Addr)
	for i, p := range c.Peers {
		set("public_key", true, p.PublicKey.Hex())
		set("preshared_key", !p.PresharedKey.IsZero(), p.PresharedKey.Hex())
		set("replace_allowed_ips", true, true)
		for _, a := range p.AllowedIPs {
			set("allowed_ip", true, a.Masked())
		}
		if p.Endpoint != "" {
			ep, err := resolveEndpoint(ctx, p.Endpoint, lookup, resolved)
			if err != nil {
				return "", fmt.Errorf("uapi: peer %d (%v): endpoint %s: %w", i+1, p.PublicKey, p.Endpoint, err)
			}
			set("endpoint", true, ep)
		}
		set("persistent_keepalive_interval", p.PersistentKeepalive != 0, p.PersistentKeepalive)
	}
	return b.String(), nil
}

// resolveEndpoint turns "host:port" into an IP address and port, looking the
// host up unless it is an IP literal. cache holds earlier answers. 4-in-6
// answers count as IPv4.
func resolveEndpoint(ctx context.Context, endpoint string, lookup func(context.Context, string) ([]netip.Addr, error), cache map[string]netip.Addr) (netip.AddrPort, error) {
	host, port, err := splitEndpoint(endpoint)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if addr, err := netip.ParseAddr(host); err == nil {
		return netip.AddrPortFrom(addr, port), nil
	}
	if addr, ok := cache[host]; ok {
		return netip.AddrPortFrom(addr, port), nil
	}
	lctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	addrs, err := lookup(lctx, host)
	cancel()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("resolve %s: %w", host, err)
	}
	i := slices.IndexFunc(addrs, func(a netip.Addr) bool { return a.Unmap().Is4() })
	if i < 0 {
		i = slices.IndexFunc(addrs, netip.Addr.Is6)
	}
	if i < 0 {
		return netip.AddrPort{}, fmt.Errorf("resolve %s: no IP addresses", host)
	}
	addr := addrs[i].Unmap()
	cache[host] = addr
	return netip.AddrPortFrom(addr, port), nil
}

func joinDNS(ifc *Interface) string {
	var parts []string
	for _, a := range ifc.DNS {
		parts = append(parts, a.String())
	}
	return strings.Join(append(parts, ifc.DNSSearch...), ", ")
}
