package connector

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/device"

	"github.com/appconnector/appconnector/connector/wireguard"
)

// Why the connector remembers where its peers were.
//
// A stock WireGuard client whose session with the connector is up keeps
// sending on that session after the connector restarts; the new device
// drops those packets, and the client only starts a new handshake after
// its keepalive and rekey timers run out (about 15 s). The connector
// cannot wait for the client, since it does not know where the client is:
// a peer without a configured Endpoint is reachable only at the address
// its authenticated packets came from. So the connector keeps each peer's
// last authenticated endpoint in the state directory and, on start, sets
// it on the peer and initiates a handshake; the client answers and moves
// to the new session at once.

// endpointsFileName is the file of the peers' last authenticated
// endpoints in the state directory.
const endpointsFileName = "endpoints.json"

const endpointsFileVersion = 1

// handshakeRefresh is how far the handshake times in the file may lag
// behind the device's before the file is written again for that reason
// alone (a changed endpoint is written at the next flush).
const handshakeRefresh = time.Minute

// handshakeWindow is how recent a peer's last handshake must be for a
// starting connector to initiate one. A client stops using a session
// device.RejectAfterTime after its handshake and then initiates a new one
// itself on its next packet, so an older session needs no help; the file's
// times may be handshakeRefresh (plus a flush interval) behind.
const handshakeWindow = device.RejectAfterTime + 2*handshakeRefresh

// storedEndpoint is where a peer was last heard from, as persisted.
type storedEndpoint struct {
	PublicKey wireguard.Key  `json:"publicKey"`
	Endpoint  netip.AddrPort `json:"endpoint"`
	// Configured is the Endpoint the peer's config had ("" for none)
	// while this endpoint was learned. If the config now says something
	// else, the config was edited since and wins.
	Configured string `json:"configured,omitempty"`
	// LastHandshake is the peer's last completed handshake when the file
	// was written.
	LastHandshake time.Time `json:"lastHandshake"`
}

// endpointsFile is the file format; Version changes if the format does.
type endpointsFile struct {
	Version int              `json:"version"`
	Peers   []storedEndpoint `json:"peers"`
}

func saveEndpoints(path string, eps []storedEndpoint) error {
	if eps == nil {
		eps = []storedEndpoint{}
	}
	data, err := json.MarshalIndent(endpointsFile{Version: endpointsFileVersion, Peers: eps}, "", "\t")
	if err != nil {
		return fmt.Errorf("save peer endpoints: %w", err)
	}
	if err := WriteFileAtomic(path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("save peer endpoints: %w", err)
	}
	return nil
}

// loadEndpoints reads the peers' endpoints. A missing file is none; a
// corrupt one is moved aside (see readStateFile).
func loadEndpoints(path string, now time.Time) ([]storedEndpoint, error) {
	var f endpointsFile
	_, err := readStateFile(path, now, "started without the peers' last endpoints", func(data []byte) error {
		if err := decodeStrict(data, &f); err != nil {
			return err
		}
		if f.Version != endpointsFileVersion {
			return fmt.Errorf("unknown version %d", f.Version)
		}
		seen := map[wireguard.Key]bool{}
		for i, e := range f.Peers {
			switch {
			case e.PublicKey.IsZero() || !e.Endpoint.IsValid() || e.Endpoint.Port() == 0:
				return fmt.Errorf("peer %d: missing publicKey or endpoint", i+1)
			case seen[e.PublicKey]:
				return fmt.Errorf("peer %d: publicKey listed twice", i+1)
			}
			seen[e.PublicKey] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load peer endpoints: %w", err)
	}
	return f.Peers, nil
}

// endpointMemory decides which remembered endpoints a starting connector
// uses, and what the file should say while it runs. After newEndpointMemory
// it is only read, except saved, which belongs to whoever writes the file
// (the maintain goroutine, then Close after it ended).
type endpointMemory struct {
	path string
	// order and configured are the configured peers, in config order,
	// and the Endpoint each has in the config ("" for none).
	order      []wireguard.Key
	configured map[wireguard.Key]string
	// restored are the remembered endpoints the device was given.
	restored map[wireguard.Key]storedEndpoint
	// handshake lists the peers to initiate a handshake with on start.
	handshake []wireguard.Key
	// saved is what the file holds, as far as this process knows.
	saved []storedEndpoint
}

// newEndpointMemory applies the remembered endpoints stored to a copy of
// cfg, which it returns for the device. For each configured peer with a
// remembered endpoint:
//
//   - if the peer has no Endpoint in the config, the remembered one is
//     used;
//   - if it has one, the remembered endpoint is used only when the config
//     still says what it said when that endpoint was learned (the peer
//     roamed since the config was written: what was learned is newer)
//     and the session there is recent (last handshake within
//     handshakeWindow); otherwise the config's Endpoint, resolved anew,
//     is used and the remembered endpoint is forgotten;
//   - a handshake is initiated on start if the last handshake is within
//     handshakeWindow of now, to whichever endpoint the peer then has.
//
// Remembered peers that are no longer configured are forgotten: saved is
// stored as loaded, so the next write drops them.
func newEndpointMemory(path string, cfg *wireguard.Config, stored []storedEndpoint, now time.Time) (*endpointMemory, *wireguard.Config) {
	m := &endpointMemory{
		path:       path,
		configured: map[wireguard.Key]string{},
		restored:   map[wireguard.Key]storedEndpoint{},
		saved:      stored,
	}
	byKey := map[wireguard.Key]storedEndpoint{}
	for _, s := range stored {
		byKey[s.PublicKey] = s
	}
	out := *cfg
	out.Peers = append([]wireguard.Peer(nil), cfg.Peers...)
	for i := range out.Peers {
		p := &out.Peers[i]
		m.order = append(m.order, p.PublicKey)
		m.configured[p.PublicKey] = p.Endpoint
		s, ok := byKey[p.PublicKey]
		if !ok {
			continue
		}
		recent := now.Sub(s.LastHandshake) < handshakeWindow
		if p.Endpoint == "" || p.Endpoint == s.Configured && recent {
			p.Endpoint = s.Endpoint.String()
			m.restored[p.PublicKey] = s
		}
		if recent {
			m.handshake = append(m.handshake, p.PublicKey)
		}
	}
	return m, &out
}

// current is what the file should hold, given the device's peers: each
// configured peer that completed a handshake in this run at the endpoint
// the device has for it now; else what was restored for it.
func (m *endpointMemory) current(peers []peerState) []storedEndpoint {
	live := map[wireguard.Key]peerState{}
	for _, p := range peers {
		k, err := wireguard.ParseKey(p.key)
		if err == nil {
			live[k] = p
		}
	}
	var out []storedEndpoint
	for _, k := range m.order {
		if p, ok := live[k]; ok && p.handshakeSec > 0 {
			if ep, err := netip.ParseAddrPort(p.endpoint); err == nil {
				out = append(out, storedEndpoint{
					PublicKey:     k,
					Endpoint:      ep,
					Configured:    m.configured[k],
					LastHandshake: time.Unix(p.handshakeSec, 0).UTC(),
				})
				continue
			}
		}
		if s, ok := m.restored[k]; ok {
			out = append(out, s)
		}
	}
	return out
}

// stale reports whether the file, holding saved, should be rewritten to
// hold cur: a peer came, went or moved, or its handshake time in the file
// lags by more than handshakeRefresh.
func stale(saved, cur []storedEndpoint) bool {
	if len(saved) != len(cur) {
		return true
	}
	for i, s := range saved {
		c := cur[i]
		if s.PublicKey != c.PublicKey || s.Endpoint != c.Endpoint || s.Configured != c.Configured ||
			c.LastHandshake.Sub(s.LastHandshake) > handshakeRefresh {
			return true
		}
	}
	return false
}

// flush writes the endpoints the device reports in peers if the file
// is stale, and reports whether it wrote. Only one goroutine at a time may
// call it.
func (m *endpointMemory) flush(peers []peerState) (bool, error) {
	cur := m.current(peers)
	if !stale(m.saved, cur) {
		return false, nil
	}
	if err := saveEndpoints(m.path, cur); err != nil {
		return false, err
	}
	m.saved = cur
	return true, nil
}

// loadEndpoints reads the remembered endpoints from path and returns the
// WireGuard config the device is to get (see newEndpointMemory). A file
// that could not be read is reported, and then neither used nor
// overwritten; a corrupt one is reported and moved aside.
func (c *Connector) loadEndpoints(path string, cfg *wireguard.Config, now time.Time) *wireguard.Config {
	stored, err := loadEndpoints(path, now)
	if errors.Is(err, errStateUnreadable) {
		c.log.Error(err.Error() + "; peer endpoints will not be saved")
		return cfg
	}
	if err != nil {
		c.log.Error(err.Error())
	}
	m, out := newEndpointMemory(path, cfg, stored, now)
	c.endpoints = m
	if len(stored) > 0 {
		c.log.Info("restored peer endpoints", "used", len(m.restored), "stored", len(stored),
			"handshakes", len(m.handshake), "file", path)
	}
	return out
}

// greetPeers initiates a handshake with each peer whose session may have
// outlived the previous run (see newEndpointMemory). The device must be up.
func (c *Connector) greetPeers() {
	if c.endpoints == nil {
		return
	}
	for _, k := range c.endpoints.handshake {
		p := c.wg.LookupPeer(device.NoisePublicKey(k))
		if p == nil {
			continue
		}
		if err := p.SendHandshakeInitiation(false); err != nil {
			c.log.Warn("handshake with a remembered peer", "peer", k.String(), "err", err)
		}
	}
}
