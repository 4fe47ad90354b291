package connector

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"path/filepath"

	"github.com/appconnector/appconnector/connector/wireguard"
)

// Files of the embedded default setup, inside the state directory.
const (
	// ConnectorConfName is the connector's own wg-quick file.
	ConnectorConfName = "connector.conf"
	// ClientConfName is a ready-to-use wg-quick file for one client peer.
	ClientConfName = "client.conf"
	// DefaultListenPort is WireGuard's customary port.
	DefaultListenPort = 51820
)

// StateOptions describe the embedded default setup.
type StateOptions struct {
	// Dir is the state directory; it is created (mode 0700) if missing.
	Dir string
	// ListenPort overrides the connector's listen port for this run (and
	// is the one written into a new config). Zero keeps the config's own,
	// or DefaultListenPort for a new one.
	ListenPort uint16
	// EndpointHost is the address the client reaches the connector at;
	// the port is the listen port. The zero Addr means 127.0.0.1.
	EndpointHost netip.Addr
	// Routes are added to the client's AllowedIPs (the tunnel addresses of
	// the connector always are), so its traffic to the apps enters the
	// tunnel.
	Routes []netip.Prefix
}

// State is the embedded default: the connector's config and the path of
// the client config written next to it.
type State struct {
	Config     *wireguard.Config
	Warnings   []wireguard.Warning
	ClientPath string
	// Created is true when this call generated the keys and addresses.
	Created bool
}

// LoadOrCreateState returns the connector identity kept in opts.Dir,
// generating one on first use: a key pair, a random private IPv4 /24 and
// IPv6 ULA /64 tunnel network, and one client peer. Each call rewrites the
// client's config with the current endpoint and routes. An existing file
// that does not parse is an error; it is never replaced.
func LoadOrCreateState(opts StateOptions) (*State, error) {
	if opts.Dir == "" {
		return nil, errors.New("state: no directory")
	}
	if err := PrepareStateDir(opts.Dir); err != nil {
		return nil, err
	}
	connPath := filepath.Join(opts.Dir, ConnectorConfName)
	clientPath := filepath.Join(opts.Dir, ClientConfName)
	st := &State{ClientPath: clientPath}
	for _, p := range []string{connPath, clientPath} {
		if err := checkStateFile(p); err != nil {
			return nil, err
		}
	}

	cfg, warns, err := wireguard.Load(connPath)
	var client *wireguard.Config
	switch {
	case err == nil:
		st.Config, st.Warnings = cfg, warns
		client, _, err = wireguard.Load(clientPath)
		if err != nil {
			return nil, fmt.Errorf("state: %w (delete %s too to start over with new keys)", err, connPath)
		}
	case errors.Is(err, fs.ErrNotExist):
		st.Config, client, err = newState(opts.ListenPort)
		if err != nil {
			return nil, fmt.Errorf("state: %w", err)
		}
		st.Created = true
	default:
		return nil, fmt.Errorf("state: %w", err)
	}
	if len(client.Peers) != 1 || len(st.Config.Peers) == 0 {
		return nil, fmt.Errorf("state: %s and %s do not describe one client of this connector", clientPath, connPath)
	}
	if opts.ListenPort != 0 {
		st.Config.Interface.ListenPort = opts.ListenPort
	}
	if st.Config.Interface.ListenPort == 0 {
		st.Config.Interface.ListenPort = DefaultListenPort
	}
	host := opts.EndpointHost
	if !host.IsValid() {
		host = netip.MustParseAddr("127.0.0.1")
	}
	peer := &client.Peers[0]
	peer.Endpoint = netip.AddrPortFrom(host, st.Config.Interface.ListenPort).String()
	peer.AllowedIPs = peer.AllowedIPs[:0]
	for _, a := range st.Config.Interface.Addresses {
		peer.AllowedIPs = append(peer.AllowedIPs, netip.PrefixFrom(a.Addr(), a.Addr().BitLen()))
	}
	peer.AllowedIPs = append(peer.AllowedIPs, opts.Routes...)
	// The client asks the connector's tunnel addresses for names.
	client.Interface.DNS = client.Interface.DNS[:0]
	for _, a := range st.Config.Interface.Addresses {
		client.Interface.DNS = append(client.Interface.DNS, a.Addr())
	}
	// The client's file first: a new connector.conf is written last, so
	// its presence means both files are complete.
	if err := writeConfig(clientPath, client); err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	if st.Created {
		if err := writeConfig(connPath, st.Config); err != nil {
			return nil, fmt.Errorf("state: %w", err)
		}
	}
	return st, nil
}

// newState generates a connector config and its one client's config.
func newState(port uint16) (connector, client *wireguard.Config, err error) {
	if port == 0 {
		port = DefaultListenPort
	}
	serverKey, err := wireguard.GeneratePrivateKey()
	if err != nil {
		return nil, nil, err
	}
	clientKey, err := wireguard.GeneratePrivateKey()
	if err != nil {
		return nil, nil, err
	}
	psk, err := wireguard.GeneratePresharedKey()
	if err != nil {
		return nil, nil, err
	}
	// A random 10.x.y.0/24 and a random ULA fdxx:xxxx:xxxx:xxxx::/64
	// (RFC 4193) make clashes with the networks around unlikely.
	var r [9]byte
	if _, err := rand.Read(r[:]); err != nil {
		return nil, nil, err
	}
	v4 := func(host byte) netip.Addr { return netip.AddrFrom4([4]byte{10, r[0], r[1], host}) }
	v6 := func(host byte) netip.Addr {
		var a [16]byte
		a[0] = 0xfd
		copy(a[1:8], r[2:9])
		a[15] = host
		return netip.AddrFrom16(a)
	}
	connector = &wireguard.Config{
		Interface: wireguard.Interface{
			PrivateKey: serverKey,
			Addresses:  []netip.Prefix{netip.PrefixFrom(v4(1), 24), netip.PrefixFrom(v6(1), 64)},
			ListenPort: port,
		},
		Peers: []wireguard.Peer{{
			PublicKey:    clientKey.PublicKey(),
			PresharedKey: psk,
			AllowedIPs:   []netip.Prefix{netip.PrefixFrom(v4(2), 32), netip.PrefixFrom(v6(2), 128)},
		}},
	}
	client = &wireguard.Config{
		Interface: wireguard.Interface{
			PrivateKey: clientKey,
			Addresses:  []netip.Prefix{netip.PrefixFrom(v4(2), 32), netip.PrefixFrom(v6(2), 128)},
		},
		Peers: []wireguard.Peer{{
			PublicKey:           serverKey.PublicKey(),
			PresharedKey:        psk,
			PersistentKeepalive: 25,
		}},
	}
	return connector, client, nil
}

func writeConfig(path string, cfg *wireguard.Config) error {
	var b bytes.Buffer
	b.WriteString("# Written by appconnector. Holds private keys: keep it private.\n")
	if _, err := cfg.WriteTo(&b); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return WriteFileAtomic(path, b.Bytes(), 0o600)
}
