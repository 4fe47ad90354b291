package netstack

import (
	"context"
	"errors"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// handleUDP is the stack's UDP handler for datagrams that match no
// endpoint, that is, the first datagram of a new flow. A flow the policy
// or a limit refuses returns false, so the stack answers with an ICMP port
// unreachable and no host socket is opened. Otherwise it opens the host
// socket, creates a connected endpoint for the flow (which takes this and
// every later datagram of the flow) and starts the flow's goroutines.
func (s *Stack) handleUDP(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	f := flowOf(UDP, id)
	if !s.allow(f) {
		s.stats.udpRefused.Add(1)
		return false
	}
	peer := s.peerOf(f.Src.Addr())
	if !s.limits.admit(peer, f.Dst.Addr(), false) {
		s.stats.udpLimited.Add(1)
		s.flowLog("%v: refused: flow limit reached for peer %s", f, peer)
		s.refused(f, EndLimit, "")
		return false
	}
	// Dialing UDP sends nothing and does not block: it only creates and
	// connects a socket, so it may run on the packet path.
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.DialTimeout)
	hc, err := s.dial(ctx, "udp", f.Dst.String())
	cancel()
	if err != nil {
		s.limits.flowDone(peer, f.Dst.Addr())
		s.stats.udpHostRefused.Add(1)
		s.flowLog("%v: refused: %v", f, err)
		s.refused(f, EndDialFailed, DialFailureNames[dialFailure(err)])
		return false
	}
	var wq waiter.Queue
	ep, terr := udp.NewForwarderRequest(s.stack, id, pkt).CreateEndpoint(&wq)
	if terr != nil {
		hc.Close()
		s.limits.flowDone(peer, f.Dst.Addr())
		s.stats.handlerFailures.Add(1)
		s.flowLog("%v: dropped: create endpoint: %v", f, terr)
		return true
	}
	pc := gonet.NewUDPConn(&wq, ep)
	fl := &udpFlow{s: s, f: f, peer: peer, pc: pc, hc: hc, start: time.Now()}
	fl.fc.acct = &flowAccount{f: f, start: fl.start}
	fl.readPeer, fl.stopPeer = peerReader(ep, &wq, pc, datagramBufs)
	fl.fc.abortFn = func() {
		hc.Close()
		pc.Close()
	}
	timeout := s.cfg.UDPIdleTimeout
	if f.Dst.Port() == 53 {
		timeout = s.cfg.DNSIdleTimeout
	}
	fl.timeout = timeout
	fl.touch()

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		fl.fc.abort()
		s.limits.flowDone(peer, f.Dst.Addr())
		return true
	}
	s.flows[&fl.fc] = struct{}{}
	s.stats.udpForwarded.Add(1)
	fl.pending.Store(2)
	s.goLocked(fl.up)
	s.goLocked(fl.down)
	return true
}

// udpFlow is one forwarded UDP flow: a connected gVisor endpoint on the
// peer side and a connected host socket.
type udpFlow struct {
	s        *Stack
	f        Flow
	peer     string
	pc       *gonet.UDPConn
	readPeer readFunc
	stopPeer func()
	hc       net.Conn
	fc       flowConn
	start    time.Time
	timeout  time.Duration
	// last is the time of the latest datagram in either direction, as
	// time.Since(start).
	last atomic.Int64
	// pending counts the flow's goroutines still running; the last one
	// out releases the flow.
	pending atomic.Int32
}

// up copies datagrams from the peer to the host.
func (fl *udpFlow) up() {
	defer fl.done()
	defer fl.stopPeer()
	for {
		b, n, err := fl.readPeer()
		if err != nil {
			if b != nil {
				datagramBufs.put(b)
			}
			fl.fc.abort()
			return
		}
		fl.touch()
		_, err = fl.hc.Write((*b)[:n])
		datagramBufs.put(b)
		if err != nil {
			fl.hostError(err)
			return
		}
		fl.fc.acct.up.Add(uint64(n))
	}
}

// down copies datagrams from the host to the peer. It also runs the idle
// timer: its read deadline is the moment the flow would become idle.
func (fl *udpFlow) down() {
	defer fl.done()
	read := hostReader(fl.hc, datagramBufs, false)
	wait := fl.timeout
	for {
		fl.hc.SetReadDeadline(time.Now().Add(wait))
		b, n, err := read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if b != nil {
				datagramBufs.put(b)
			}
			idle := time.Since(fl.start) - time.Duration(fl.last.Load())
			if idle >= fl.timeout {
				fl.s.stats.udpIdleClosed.Add(1)
				fl.fc.acct.setEnd(EndIdle)
				fl.fc.abort()
				return
			}
			wait = fl.timeout - idle
			continue
		}
		if err != nil {
			if b != nil {
				datagramBufs.put(b)
			}
			fl.hostError(err)
			return
		}
		wait = fl.timeout
		fl.touch()
		_, err = fl.pc.Write((*b)[:n])
		datagramBufs.put(b)
		if err != nil {
			fl.fc.acct.setEnd(EndPeerReset)
			fl.fc.abort()
			return
		}
		fl.fc.acct.down.Add(uint64(n))
	}
}

// hostError ends the flow after the host socket failed. If the host said
// the port is unreachable, the peer hears the same.
func (fl *udpFlow) hostError(err error) {
	fl.fc.acct.setEnd(EndHostReset)
	if errors.Is(err, syscall.ECONNREFUSED) {
		fl.s.stats.udpHostRefused.Add(1)
		if perr := fl.s.sendPortUnreachable(fl.f); perr != nil {
			fl.s.flowLog("%v: icmp unreachable: %v", fl.f, perr)
		}
	}
	fl.fc.abort()
}

func (fl *udpFlow) touch() { fl.last.Store(int64(time.Since(fl.start))) }

// done runs as each of the flow's two goroutines exits.
func (fl *udpFlow) done() {
	if fl.pending.Add(-1) != 0 {
		return
	}
	fl.fc.abort()
	fl.s.untrack(&fl.fc)
	fl.s.limits.flowDone(fl.peer, fl.f.Dst.Addr())
	if rec, ok := fl.fc.acct.final(EndClosed); ok {
		fl.s.record(rec)
	}
}

// sendPortUnreachable sends the peer an ICMP (v4) or ICMPv6 port
// unreachable from f's destination, quoting a UDP header of f.
func (s *Stack) sendPortUnreachable(f Flow) error {
	src, dst := f.Dst.Addr(), f.Src.Addr()
	var quote []byte
	if src.Is4() {
		quote = make([]byte, header.IPv4MinimumSize+header.UDPMinimumSize)
		ip := header.IPv4(quote)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(len(quote)),
			TTL:         64,
			Protocol:    uint8(header.UDPProtocolNumber),
			SrcAddr:     tcpip.AddrFrom4(dst.As4()),
			DstAddr:     tcpip.AddrFrom4(src.As4()),
		})
		ip.SetChecksum(^ip.CalculateChecksum())
	} else {
		quote = make([]byte, header.IPv6MinimumSize+header.UDPMinimumSize)
		header.IPv6(quote).Encode(&header.IPv6Fields{
			PayloadLength:     header.UDPMinimumSize,
			TransportProtocol: header.UDPProtocolNumber,
			HopLimit:          64,
			SrcAddr:           tcpip.AddrFrom16(dst.As16()),
			DstAddr:           tcpip.AddrFrom16(src.As16()),
		})
	}
	u := header.UDP(quote[len(quote)-header.UDPMinimumSize:])
	u.Encode(&header.UDPFields{SrcPort: f.Src.Port(), DstPort: f.Dst.Port(), Length: header.UDPMinimumSize})

	if src.Is4() {
		pkt := make([]byte, header.IPv4MinimumSize+header.ICMPv4MinimumSize+len(quote))
		ip := header.IPv4(pkt)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(len(pkt)),
			TTL:         64,
			Protocol:    uint8(header.ICMPv4ProtocolNumber),
			SrcAddr:     tcpip.AddrFrom4(src.As4()),
			DstAddr:     tcpip.AddrFrom4(dst.As4()),
		})
		ip.SetChecksum(^ip.CalculateChecksum())
		icmp := header.ICMPv4(pkt[header.IPv4MinimumSize:])
		icmp.SetType(header.ICMPv4DstUnreachable)
		icmp.SetCode(header.ICMPv4PortUnreachable)
		copy(icmp[header.ICMPv4MinimumSize:], quote)
		icmp.SetChecksum(^checksum.Checksum(icmp, 0))
		return s.WriteRawPacket(pkt)
	}
	pkt := make([]byte, header.IPv6MinimumSize+header.ICMPv6MinimumSize+len(quote))
	header.IPv6(pkt).Encode(&header.IPv6Fields{
		PayloadLength:     uint16(header.ICMPv6MinimumSize + len(quote)),
		TransportProtocol: header.ICMPv6ProtocolNumber,
		HopLimit:          64,
		SrcAddr:           tcpip.AddrFrom16(src.As16()),
		DstAddr:           tcpip.AddrFrom16(dst.As16()),
	})
	icmp := header.ICMPv6(pkt[header.IPv6MinimumSize:])
	icmp.SetType(header.ICMPv6DstUnreachable)
	icmp.SetCode(header.ICMPv6PortUnreachable)
	copy(icmp[header.ICMPv6MinimumSize:], quote)
	icmp.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
		Header: icmp,
		Src:    tcpip.AddrFrom16(src.As16()),
		Dst:    tcpip.AddrFrom16(dst.As16()),
	}))
	return s.WriteRawPacket(pkt)
}
