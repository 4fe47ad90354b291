package connector

import (
	"net"

	"github.com/appconnector/appconnector/connector/wireguard"
)

// ServeUAPI answers WireGuard's cross-platform userspace API on ln, read
// only: `get=1` returns the device's state (what `wg show` prints);
// `set=1` is refused with EPERM, since the configuration comes from the
// connector's own files and a change made here would be lost or, worse,
// disagree with the policy. It returns when ln is closed, after closing
// the connections it serves.
//
// Serve it only where the operator alone can reach it: the answer holds
// the interface's private key, as it does for wireguard-go and the
// kernel.
func (c *Connector) ServeUAPI(ln net.Listener) error {
	return wireguard.ServeUAPI(ln, c.wg.IpcGetOperation)
}
