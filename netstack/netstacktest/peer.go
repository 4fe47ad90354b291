// Package netstacktest provides a complete WireGuard peer for tests: a
// wireguard-go device on a real UDP socket, with its own userspace stack
// behind it, from which a test dials through the tunnel. It forwards
// nothing; it is the client end.
package netstacktest

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/curve25519"
	"golang.zx2c4.com/wireguard/device"
	wgtun "golang.zx2c4.com/wireguard/tun"

	"github.com/appconnector/appconnector/connector/wireguard"
	"github.com/appconnector/appconnector/netstack"
	"github.com/appconnector/appconnector/tun"
)

// Key is a Curve25519 key.
type Key [32]byte

// NewPrivateKey returns a random, clamped private key.
func NewPrivateKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return k, err
	}
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k, nil
}

// Public returns the public key of a private key.
func (k Key) Public() Key {
	var pub Key
	p, err := curve25519.X25519(k[:], curve25519.Basepoint)
	if err != nil {
		panic(err) // only for a low-order key, which a clamped key is not
	}
	copy(pub[:], p)
	return pub
}

// RemotePeer describes the peer a Peer talks to.
type RemotePeer struct {
	PublicKey    Key
	PresharedKey Key // zero: none
	Endpoint     netip.AddrPort
	AllowedIPs   []netip.Prefix
}

// Config configures a Peer.
type Config struct {
	// PrivateKey is the peer's key; zero generates one.
	PrivateKey Key
	// Addresses are the peer's tunnel addresses.
	Addresses []netip.Prefix
	// ListenAddr is the host address of its UDP socket; zero means
	// 127.0.0.1. The port is chosen by the system.
	ListenAddr netip.Addr
	// MTU of the tunnel; zero means tun.DefaultMTU.
	MTU int
	// Remotes are the peers it talks to.
	Remotes []RemotePeer
	// Logf receives WireGuard's error log; nil discards it.
	Logf func(format string, args ...any)
	// Inbound, if set, sees every IP packet WireGuard delivers to the
	// peer, before its stack does. pkt is valid only during the call.
	Inbound func(pkt []byte)
}

// Peer is a running WireGuard peer with a userspace stack.
type Peer struct {
	*netstack.Stack
	PrivateKey Key
	// Port is the UDP port its WireGuard socket listens on.
	Port uint16

	tun *tun.Device
	dev *device.Device
}

// New starts a Peer.
func New(cfg Config) (*Peer, error) {
	if cfg.PrivateKey == (Key{}) {
		k, err := NewPrivateKey()
		if err != nil {
			return nil, err
		}
		cfg.PrivateKey = k
	}
	if !cfg.ListenAddr.IsValid() {
		cfg.ListenAddr = netip.MustParseAddr("127.0.0.1")
	}
	td, err := tun.New(tun.Config{MTU: cfg.MTU})
	if err != nil {
		return nil, err
	}
	st, err := netstack.New(td, netstack.Config{Addresses: cfg.Addresses, Logf: cfg.Logf})
	if err != nil {
		td.Close()
		return nil, err
	}
	bind, err := wireguard.NewBind(cfg.ListenAddr)
	if err != nil {
		st.Close()
		td.Close()
		return nil, err
	}
	logf := cfg.Logf
	if logf == nil {
		logf = device.DiscardLogf
	}
	var wtd wgtun.Device = td
	if cfg.Inbound != nil {
		wtd = sniffDevice{td, cfg.Inbound}
	}
	dev := device.NewDevice(wtd, bind, &device.Logger{Verbosef: device.DiscardLogf, Errorf: logf})
	p := &Peer{Stack: st, PrivateKey: cfg.PrivateKey, tun: td, dev: dev}

	var b strings.Builder
	fmt.Fprintf(&b, "private_key=%s\n", hex.EncodeToString(cfg.PrivateKey[:]))
	for _, r := range cfg.Remotes {
		fmt.Fprintf(&b, "public_key=%s\n", hex.EncodeToString(r.PublicKey[:]))
		if r.PresharedKey != (Key{}) {
			fmt.Fprintf(&b, "preshared_key=%s\n", hex.EncodeToString(r.PresharedKey[:]))
		}
		if r.Endpoint.IsValid() {
			fmt.Fprintf(&b, "endpoint=%s\n", r.Endpoint)
		}
		for _, a := range r.AllowedIPs {
			fmt.Fprintf(&b, "allowed_ip=%s\n", a)
		}
	}
	if err := dev.IpcSet(b.String()); err != nil {
		p.Close()
		return nil, fmt.Errorf("netstacktest: configure: %w", err)
	}
	if err := dev.Up(); err != nil {
		p.Close()
		return nil, fmt.Errorf("netstacktest: up: %w", err)
	}
	get, err := dev.IpcGet()
	if err != nil {
		p.Close()
		return nil, err
	}
	for _, line := range strings.Split(get, "\n") {
		if v, ok := strings.CutPrefix(line, "listen_port="); ok {
			fmt.Sscan(v, &p.Port)
		}
	}
	return p, nil
}

// sniffDevice shows every packet written to a tun.Device to inbound.
type sniffDevice struct {
	*tun.Device
	inbound func(pkt []byte)
}

func (d sniffDevice) Write(bufs [][]byte, offset int) (int, error) {
	for _, b := range bufs {
		d.inbound(b[offset:])
	}
	return d.Device.Write(bufs, offset)
}

// PublicKey returns the peer's public key.
func (p *Peer) PublicKey() Key { return p.PrivateKey.Public() }

// PublicKeyString returns the peer's public key in base64, as WireGuard
// configurations write it.
func (p *Peer) PublicKeyString() string {
	k := p.PublicKey()
	return base64.StdEncoding.EncodeToString(k[:])
}

// LastHandshake returns when the peer last completed a handshake with the
// remote peer whose public key is remote; the zero Time if never.
func (p *Peer) LastHandshake(remote Key) (time.Time, error) {
	get, err := p.dev.IpcGet()
	if err != nil {
		return time.Time{}, fmt.Errorf("netstacktest: read wireguard state: %w", err)
	}
	want := "public_key=" + hex.EncodeToString(remote[:])
	found := false
	var sec, nsec int64
lines:
	for _, line := range strings.Split(get, "\n") {
		k, v, _ := strings.Cut(line, "=")
		switch {
		case k == "public_key":
			if found {
				break lines // the next peer's
			}
			found = line == want
		case found && k == "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(v, 10, 64)
		case found && k == "last_handshake_time_nsec":
			nsec, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	switch {
	case !found:
		return time.Time{}, fmt.Errorf("netstacktest: no remote peer %s", base64.StdEncoding.EncodeToString(remote[:]))
	case sec == 0 && nsec == 0:
		return time.Time{}, nil
	}
	return time.Unix(sec, nsec), nil
}

// TunStats returns the counters of the peer's tun device.
func (p *Peer) TunStats() tun.Stats { return p.tun.Stats() }

// Close stops the peer and waits for its goroutines.
func (p *Peer) Close() error {
	p.Stack.Close()
	p.dev.Close()
	return nil
}
