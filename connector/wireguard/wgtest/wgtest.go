// Package wgtest provides a complete WireGuard peer for tests: a userspace
// device built by wireguard.NewDevice on a real UDP socket, from whose
// stack a test dials through the tunnel. It forwards nothing; it is the
// far end a test drives.
package wgtest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector/logger"
	"github.com/appconnector/appconnector/connector/wireguard"
	"github.com/appconnector/appconnector/netstack"
	"github.com/appconnector/appconnector/tun"
)

// Config configures a Peer.
type Config struct {
	// PrivateKey is the peer's key; zero generates one.
	PrivateKey wireguard.Key
	// Addresses are the peer's tunnel addresses.
	Addresses []netip.Prefix
	// ListenAddr is the host address of its UDP socket; zero means
	// 127.0.0.1. The port is chosen by the system.
	ListenAddr netip.Addr
	// MTU of the tunnel; zero means tun.DefaultMTU.
	MTU int
	// Remotes are the peers it talks to; their endpoints are IP
	// literals.
	Remotes []wireguard.Peer
	// Logf receives WireGuard's error log and the stack's; nil discards
	// them.
	Logf logger.Logf
	// Inbound, if set, sees every IP packet WireGuard delivers to the
	// peer, before its stack does. pkt is valid only during the call.
	Inbound func(pkt []byte)
}

// Peer is a running WireGuard peer with a userspace stack.
type Peer struct {
	*netstack.Stack
	PrivateKey wireguard.Key
	// Port is the UDP port its WireGuard socket listens on.
	Port uint16

	dev *wireguard.Device
}

// New starts a Peer.
func New(cfg Config) (*Peer, error) {
	if cfg.PrivateKey.IsZero() {
		k, err := wireguard.GeneratePrivateKey()
		if err != nil {
			return nil, err
		}
		cfg.PrivateKey = k
	}
	if !cfg.ListenAddr.IsValid() {
		cfg.ListenAddr = netip.MustParseAddr("127.0.0.1")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dev, err := wireguard.NewDevice(ctx, wireguard.DeviceConfig{
		Config: &wireguard.Config{
			Interface: wireguard.Interface{PrivateKey: cfg.PrivateKey, Addresses: cfg.Addresses, MTU: cfg.MTU},
			Peers:     cfg.Remotes,
		},
		ListenAddr: cfg.ListenAddr,
		Stack:      netstack.Config{Logf: cfg.Logf},
		Errorf:     cfg.Logf,
		Inbound:    cfg.Inbound,
	})
	if err != nil {
		return nil, fmt.Errorf("wgtest: %w", err)
	}
	return &Peer{Stack: dev.Stack, PrivateKey: cfg.PrivateKey, Port: dev.Port(), dev: dev}, nil
}

// PublicKey returns the peer's public key.
func (p *Peer) PublicKey() wireguard.Key { return p.PrivateKey.PublicKey() }

// PublicKeyString returns the peer's public key in base64, as WireGuard
// configurations write it.
func (p *Peer) PublicKeyString() string { return p.PublicKey().String() }

// LastHandshake returns when the peer last completed a handshake with the
// remote peer whose public key is remote; the zero Time if never.
func (p *Peer) LastHandshake(remote wireguard.Key) (time.Time, error) {
	return p.dev.LastHandshake(remote)
}

// TunStats returns the counters of the peer's tun device.
func (p *Peer) TunStats() tun.Stats { return p.dev.Tun.Stats() }

// Close stops the peer and waits for its goroutines.
func (p *Peer) Close() error {
	p.dev.Close()
	return nil
}

// UAPIExchange sends one request to the WireGuard UAPI socket at path and
// returns the reply up to and including its errno line.
func UAPIExchange(tb testing.TB, path, req string) string {
	tb.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(req)); err != nil {
		tb.Fatal(err)
	}
	var b strings.Builder
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			tb.Fatalf("UAPI reply so far %q: %v", b.String(), err)
		}
		b.WriteString(line)
		if strings.HasPrefix(line, "errno=") {
			return b.String()
		}
	}
}
