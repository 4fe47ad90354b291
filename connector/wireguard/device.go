package wireguard

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	wgtun "golang.zx2c4.com/wireguard/tun"

	"github.com/appconnector/appconnector/connector/logger"
	"github.com/appconnector/appconnector/netstack"
	"github.com/appconnector/appconnector/tun"
)

// DeviceConfig configures a userspace WireGuard device (see NewDevice).
type DeviceConfig struct {
	// Config is the interface (private key, tunnel addresses, MTU, listen
	// port) and its peers.
	Config *Config
	// ListenAddr is the host address of the UDP socket. The zero Addr
	// uses wireguard-go's own bind, on every address of both families.
	ListenAddr netip.Addr
	// Stack configures the userspace stack; its Addresses are
	// Config.Interface.Addresses.
	Stack netstack.Config
	// Errorf receives WireGuard's errors and Verbosef its events, some of
	// them per packet (a caller that logs them rate-limits them). Nil
	// discards.
	Errorf, Verbosef logger.Logf
	// Listen, if set, runs once the stack exists and before the device
	// comes up, so that the first packet finds the listeners it opens. If
	// NewDevice fails later, it calls stop (which closes them and waits
	// for their servers) before it closes the stack.
	Listen func(*netstack.Stack) (stop func(), err error)
	// Inbound, if set, sees every IP packet WireGuard delivers, before
	// the stack does; pkt is valid only during the call.
	Inbound func(pkt []byte)
}

// Device is a running userspace WireGuard device: wireguard-go's device
// over a tun.Device whose packets a netstack.Stack handles. The methods of
// wireguard-go's device (IpcGet, Up, Down, LookupPeer, ...) are promoted.
type Device struct {
	*device.Device
	Tun   *tun.Device
	Stack *netstack.Stack
	port  uint16
}

// NewDevice builds a userspace device (tun device, stack, bind, WireGuard
// device), configures it from cfg.Config (endpoint names resolved within
// ctx) and brings it up. It is the one way appconnector builds a device:
// the connector, the client, the test peer and the harness all call it.
func NewDevice(ctx context.Context, cfg DeviceConfig) (*Device, error) {
	if cfg.Config == nil {
		return nil, errors.New("wireguard: device without a configuration")
	}
	uapi, err := cfg.Config.UAPI(ctx, nil)
	if err != nil {
		return nil, err
	}
	td, err := tun.New(tun.Config{MTU: cfg.Config.Interface.MTU})
	if err != nil {
		return nil, err
	}
	sc := cfg.Stack
	sc.Addresses = cfg.Config.Interface.Addresses
	st, err := netstack.New(td, sc)
	if err != nil {
		td.Close()
		return nil, err
	}
	stop := func() {}
	fail := func(err error) (*Device, error) {
		stop()
		st.Close()
		td.Close()
		return nil, err
	}
	if cfg.Listen != nil {
		s, err := cfg.Listen(st)
		if err != nil {
			return fail(err)
		}
		stop = s
	}
	var bind conn.Bind
	if cfg.ListenAddr.IsValid() {
		if bind, err = NewBind(cfg.ListenAddr); err != nil {
			return fail(err)
		}
	} else {
		bind = conn.NewDefaultBind()
	}
	var wtd wgtun.Device = td
	if cfg.Inbound != nil {
		wtd = sniffDevice{td, cfg.Inbound}
	}
	d := &Device{
		Device: device.NewDevice(wtd, bind, &device.Logger{Verbosef: orDiscard(cfg.Verbosef), Errorf: orDiscard(cfg.Errorf)}),
		Tun:    td,
		Stack:  st,
	}
	closeAll := func(err error) (*Device, error) {
		stop()
		d.Close()
		return nil, err
	}
	if err := d.IpcSet(uapi); err != nil {
		return closeAll(fmt.Errorf("configure wireguard: %w", err))
	}
	if err := d.Up(); err != nil {
		return closeAll(fmt.Errorf("wireguard up: %w", err))
	}
	if d.port, err = ListenPort(d.Device); err != nil {
		return closeAll(err)
	}
	return d, nil
}

func orDiscard(f logger.Logf) logger.Logf {
	if f == nil {
		return logger.Discard
	}
	return f
}

// Port is the UDP port the device listens on.
func (d *Device) Port() uint16 { return d.port }

// Close closes the stack, then the device with its tun device and bind.
// The stack may have been closed before.
func (d *Device) Close() {
	d.Stack.Close()
	d.Device.Close()
}

// LastHandshake returns when the device last completed a handshake with
// the peer whose public key is peer; the zero Time if never.
func (d *Device) LastHandshake(peer Key) (time.Time, error) {
	peers, err := PeerStates(d.Device)
	if err != nil {
		return time.Time{}, err
	}
	for _, p := range peers {
		if p.PublicKey == peer {
			return p.LastHandshake, nil
		}
	}
	return time.Time{}, fmt.Errorf("no peer %s", peer)
}

// PeerState is one peer as a device reports it.
type PeerState struct {
	PublicKey Key
	// Endpoint is the ip:port of the peer's last authenticated packet,
	// or the configured one; "" if none.
	Endpoint         string
	LastHandshake    time.Time // the zero Time if none
	RxBytes, TxBytes uint64
}

// PeerStates reads each peer's state from a wireguard-go device (its
// UAPI "get": a public_key line starts each peer).
func PeerStates(d *device.Device) ([]PeerState, error) {
	dump, err := d.IpcGet()
	if err != nil {
		return nil, fmt.Errorf("read wireguard state: %w", err)
	}
	var out []PeerState
	var sec, nsec int64
	done := func() {
		if len(out) > 0 && (sec != 0 || nsec != 0) {
			out[len(out)-1].LastHandshake = time.Unix(sec, nsec)
		}
		sec, nsec = 0, 0
	}
	sc := bufio.NewScanner(strings.NewReader(dump))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		if k == "public_key" {
			done()
			b, err := hex.DecodeString(v)
			if err != nil || len(b) != len(Key{}) {
				return nil, fmt.Errorf("read wireguard state: public_key %q", v)
			}
			out = append(out, PeerState{PublicKey: Key(b)})
			continue
		}
		if len(out) == 0 {
			continue // the interface's lines
		}
		p := &out[len(out)-1]
		switch k {
		case "endpoint":
			p.Endpoint = v
		case "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			nsec, _ = strconv.ParseInt(v, 10, 64)
		case "rx_bytes":
			p.RxBytes, _ = strconv.ParseUint(v, 10, 64)
		case "tx_bytes":
			p.TxBytes, _ = strconv.ParseUint(v, 10, 64)
		}
	}
	done()
	return out, nil
}

// ListenPort asks a wireguard-go device which UDP port it listens on.
func ListenPort(d *device.Device) (uint16, error) {
	text, err := d.IpcGet()
	if err != nil {
		return 0, fmt.Errorf("read wireguard state: %w", err)
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "listen_port="); ok {
			p, err := strconv.ParseUint(v, 10, 16)
			if err != nil {
				return 0, fmt.Errorf("read wireguard listen port %q: %w", v, err)
			}
			return uint16(p), nil
		}
	}
	return 0, errors.New("wireguard reported no listen port")
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
