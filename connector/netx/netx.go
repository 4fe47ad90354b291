// Package netx holds the dial function type that every layer of
// appconnector takes: the stack's host dials, the client's direct path and
// the proxies' outbound connections. It is a leaf: it imports nothing of
// appconnector.
package netx

import (
	"context"
	"net"
)

// DialFunc opens a connection to address ("host:port"; IPv6 literals in
// brackets) over network ("tcp", "udp", ...), within ctx. (*net.Dialer).
// DialContext is one. A DialFunc is called from many goroutines at once
// and must be safe for concurrent use.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)
