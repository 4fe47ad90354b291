package netstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
)

// errnos are the errnos of the tcpip errors a dial can end with. gonet
// hands a tcpip error on as plain text (errors.New(err.String())); the
// dial turns it back into the errno here, once, so callers match it with
// errors.Is(err, syscall.ECONNREFUSED) and the like, never by its words.
var errnos = map[string]syscall.Errno{
	(&tcpip.ErrConnectionRefused{}).String():  syscall.ECONNREFUSED,
	(&tcpip.ErrHostUnreachable{}).String():    syscall.EHOSTUNREACH,
	(&tcpip.ErrNetworkUnreachable{}).String(): syscall.ENETUNREACH,
	(&tcpip.ErrHostDown{}).String():           syscall.EHOSTDOWN,
	(&tcpip.ErrTimeout{}).String():            syscall.ETIMEDOUT,
	(&tcpip.ErrConnectionReset{}).String():    syscall.ECONNRESET,
	(&tcpip.ErrConnectionAborted{}).String():  syscall.ECONNABORTED,
}

// withErrno returns err, a dial error from gonet, with the tcpip error
// text inside it replaced by its errno (wrapped in the same net.OpError).
func withErrno(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		if errno, ok := errnos[oe.Err.Error()]; ok {
			c := *oe
			c.Err = errno
			return &c
		}
		return err
	}
	if errno, ok := errnos[err.Error()]; ok {
		return errno
	}
	return err
}

// errClosed is returned by Dial and Listen calls after Close.
var errClosed = errors.New("netstack: stack closed")

// DialContext opens a connection from the stack's own address to address
// through the tunnel. network is "tcp", "tcp4", "tcp6", "udp", "udp4" or
// "udp6"; address must be an IP literal and port ("192.0.2.1:443",
// "[2001:db8::1]:53"): the stack does no name resolution. The returned TCP
// connection supports CloseWrite.
func (s *Stack) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, fmt.Errorf("netstack: dial %s %q: %w", network, address, err)
	}
	if err := checkFamily(network, ap.Addr()); err != nil {
		return nil, err
	}
	if s.isClosed() {
		return nil, errClosed
	}
	fa, proto := fullAddr(ap)
	switch network {
	case "tcp", "tcp4", "tcp6":
		c, err := gonet.DialContextTCP(ctx, s.stack, fa, proto)
		if err != nil {
			return nil, fmt.Errorf("netstack: dial tcp %v: %w", ap, withErrno(err))
		}
		return c, nil
	case "udp", "udp4", "udp6":
		c, err := gonet.DialUDP(s.stack, nil, &fa, proto)
		if err != nil {
			return nil, fmt.Errorf("netstack: dial udp %v: %w", ap, withErrno(err))
		}
		return c, nil
	}
	return nil, fmt.Errorf("netstack: dial: unsupported network %q", network)
}

// ListenTCP listens on addr, which must be one of the stack's own
// addresses. Connections to it are served locally and never forwarded.
// (The stack accepts packets for every address, so a listener on the
// unspecified address would capture that port for all destinations; it is
// refused.)
func (s *Stack) ListenTCP(addr netip.AddrPort) (net.Listener, error) {
	fa, proto, err := s.listenAddr("tcp", addr)
	if err != nil {
		return nil, err
	}
	l, err := gonet.ListenTCP(s.stack, fa, proto)
	if err != nil {
		return nil, fmt.Errorf("netstack: listen tcp %v: %w", addr, err)
	}
	return l, nil
}

// ListenUDP opens a UDP socket on addr, which must be one of the stack's
// own addresses. Datagrams to it are served locally and never forwarded.
func (s *Stack) ListenUDP(addr netip.AddrPort) (net.PacketConn, error) {
	fa, proto, err := s.listenAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	c, err := gonet.DialUDP(s.stack, &fa, nil, proto)
	if err != nil {
		return nil, fmt.Errorf("netstack: listen udp %v: %w", addr, err)
	}
	return c, nil
}

func (s *Stack) listenAddr(network string, addr netip.AddrPort) (tcpip.FullAddress, tcpip.NetworkProtocolNumber, error) {
	if s.isClosed() {
		return tcpip.FullAddress{}, 0, errClosed
	}
	if !s.isLocal(addr.Addr().Unmap()) {
		return tcpip.FullAddress{}, 0, fmt.Errorf("netstack: listen %s %v: not an address of this stack", network, addr)
	}
	fa, proto := fullAddr(addr)
	return fa, proto, nil
}

func (s *Stack) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func checkFamily(network string, a netip.Addr) error {
	switch {
	case (network == "tcp4" || network == "udp4") && !a.Unmap().Is4(),
		(network == "tcp6" || network == "udp6") && a.Unmap().Is4():
		return fmt.Errorf("netstack: dial %s: address %v is of the wrong family", network, a)
	}
	return nil
}
