// Package netx holds what several layers of appconnector share about the
// network: the dial function type (the stack's host dials, the client's
// direct path, the proxies' outbound connections) and the guard in front
// of the connector's and the client's admin APIs. It is a leaf: it
// imports nothing of appconnector.
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
