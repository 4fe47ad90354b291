package netstack

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Echo (ping) forwarding.
//
// gVisor hands the stack's ICMP handler every echo request that no ICMP
// endpoint took, before it would answer one itself. For the stack's own
// addresses the handler declines and gVisor answers as a host does. For
// any other address gVisor must not answer (it would claim to be the
// destination), so the handler takes the request: an allowed one goes to
// the destination through an unprivileged ICMP socket of the host, whose
// echo replies come back to the peer from the destination's address with
// the peer's identifier restored (the kernel picks its own identifier for
// such sockets); a refused one gets destination unreachable,
// administratively prohibited.
//
// An echo flow is one host socket per (peer address, echo identifier,
// destination), like a UDP flow with the identifier as its source port: a
// ping run keeps one identifier, so it uses one socket, and replies to
// two runs with the same sequence numbers cannot be confused. It holds a
// flow slot and closes after ICMPIdleTimeout without an echo either way.

// echoHeaderSize is the size of the ICMPv4 and ICMPv6 echo headers (type,
// code, checksum, identifier, sequence number) and of the unreachable
// headers (type, code, checksum, 4 unused bytes).
const echoHeaderSize = 8

// Quotes in ICMP errors: RFC 1812 (IPv4) keeps the whole error within
// 576 bytes, RFC 4443 (IPv6) within the minimum MTU of 1280.
const (
	maxQuote4 = 576 - header.IPv4MinimumSize - echoHeaderSize
	maxQuote6 = header.IPv6MinimumMTU - header.IPv6MinimumSize - echoHeaderSize
)

// replyTTL is the TTL (hop limit) of the echo replies and errors the stack
// writes towards peers.
const replyTTL = 64

// echoKey identifies an echo flow.
type echoKey struct {
	src   netip.Addr
	ident uint16
	dst   netip.Addr
}

// handleICMP is the stack's ICMP handler (both families). It reports false
// for what gVisor should handle itself: anything but an echo request, and
// echo requests to the stack's own addresses.
func (s *Stack) handleICMP(id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	v := stack.PayloadSince(pkt.TransportHeader())
	defer v.Release()
	msg := v.AsSlice()
	v4 := pkt.NetworkProtocolNumber == header.IPv4ProtocolNumber
	if len(msg) < 1 || (v4 && msg[0] != byte(header.ICMPv4Echo)) || (!v4 && msg[0] != byte(header.ICMPv6EchoRequest)) {
		return false
	}
	src, dst := addrFrom(id.RemoteAddress), addrFrom(id.LocalAddress)
	if s.isLocal(dst) {
		return false
	}
	// From here on the request is ours; returning true drops it. No
	// error goes to a source or for a destination that is not unicast
	// (RFC 1122 section 3.2.2), nor for a request that is malformed (gVisor
	// checks ICMPv6 checksums before this; ICMPv4 ones with a bad
	// checksum reach this too).
	if len(msg) < echoHeaderSize || msg[1] != 0 || (v4 && checksum.Checksum(msg, 0) != 0xffff) {
		s.stats.icmpMalformed.Add(1)
		return true
	}
	if !unicast(src) || !unicast(dst) {
		s.stats.icmpMalformed.Add(1)
		return true
	}
	ident := header.ICMPv4(msg).Ident() // same offset in ICMPv6
	f := Flow{Proto: ICMP, Src: netip.AddrPortFrom(src, ident), Dst: netip.AddrPortFrom(dst, 0)}
	key := echoKey{src, ident, dst}
	peer := s.peerOf(src)

	s.mu.Lock()
	fl := s.echoFlows[key]
	s.mu.Unlock()
	// As with UDP, the policy decides when a flow starts; a flow that is
	// open goes on when the policy changes.
	if fl == nil && !s.allow(f) {
		s.stats.icmpRefused.Add(1)
		s.refuseEcho(peer, pkt, msg, src, dst)
		return true
	}
	if !s.echoRates.Allow(peer, bucketEcho) {
		s.stats.icmpRateLimited.Add(1)
		return true
	}
	if fl == nil {
		if fl = s.openEchoFlow(f, key, peer, pkt, msg); fl == nil {
			return true
		}
	}
	fl.send(msg)
	return true
}

// unicast reports whether a may be an ICMP error's source or destination.
func unicast(a netip.Addr) bool {
	return a.IsValid() && !a.IsUnspecified() && !a.IsMulticast() && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// refuseEcho answers a refused echo request with destination unreachable,
// administratively prohibited, within the peer's rate limit.
func (s *Stack) refuseEcho(peer string, pkt *stack.PacketBuffer, msg []byte, src, dst netip.Addr) {
	if !s.echoRates.Allow(peer, bucketRefused) {
		s.stats.icmpRateLimited.Add(1)
		return
	}
	if err := s.writeICMP(dst, src, prohibited(pkt.NetworkHeader().Slice(), msg, src.Is4())); err != nil {
		s.flowLog("icmp %v->%v: prohibited: %v", src, dst, err)
		return
	}
	s.stats.icmpProhibitedSent.Add(1)
}

// prohibited builds an ICMPv4 (type 3 code 13) or ICMPv6 (type 1 code 1)
// administratively prohibited message quoting the request: its IP header
// ipHdr and ICMP message msg, cut to the size the RFCs allow.
func prohibited(ipHdr, msg []byte, v4 bool) []byte {
	if !v4 {
		// Quote the request as if it had no extension headers (a peer's
		// ping sends none): the fixed header, then the ICMPv6 message.
		h := make([]byte, header.IPv6MinimumSize)
		copy(h, ipHdr)
		ip := header.IPv6(h)
		ip.SetNextHeader(uint8(header.ICMPv6ProtocolNumber))
		ip.SetPayloadLength(uint16(len(msg)))
		ipHdr = h
	}
	quote := append(append([]byte(nil), ipHdr...), msg...)
	out := make([]byte, echoHeaderSize, echoHeaderSize+len(quote))
	if v4 {
		out[0], out[1] = byte(header.ICMPv4DstUnreachable), byte(header.ICMPv4AdminProhibited)
		quote = quote[:min(len(quote), maxQuote4)]
	} else {
		out[0], out[1] = byte(header.ICMPv6DstUnreachable), byte(header.ICMPv6Prohibited)
		quote = quote[:min(len(quote), maxQuote6)]
	}
	return append(out, quote...)
}

// writeICMP sends the ICMP message msg (checksum not yet set) from src to
// dst, towards the peer. It goes out through gVisor's IP layer, which
// fragments what exceeds the tunnel's MTU.
func (s *Stack) writeICMP(src, dst netip.Addr, msg []byte) error {
	netProto, transProto := header.IPv4ProtocolNumber, header.ICMPv4ProtocolNumber
	if dst.Is6() {
		netProto, transProto = header.IPv6ProtocolNumber, header.ICMPv6ProtocolNumber
	}
	local, remote := tcpip.AddrFromSlice(src.AsSlice()), tcpip.AddrFromSlice(dst.AsSlice())
	r, terr := s.stack.FindRoute(nicID, local, remote, netProto, false)
	if terr != nil {
		return fmt.Errorf("route %v->%v: %v", src, dst, terr)
	}
	defer r.Release()
	payload := msg[echoHeaderSize:]
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		ReserveHeaderBytes: echoHeaderSize + int(r.MaxHeaderLength()),
		Payload:            buffer.MakeWithData(payload),
	})
	defer pkt.DecRef()
	h := pkt.TransportHeader().Push(echoHeaderSize)
	copy(h, msg[:echoHeaderSize])
	pkt.TransportProtocolNumber = transProto
	sum := checksum.Checksum(payload, 0)
	if netProto == header.IPv4ProtocolNumber {
		ih := header.ICMPv4(h)
		ih.SetChecksum(0)
		ih.SetChecksum(^checksum.Checksum(ih, sum))
	} else {
		ih := header.ICMPv6(h)
		ih.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
			Header: ih, Src: local, Dst: remote, PayloadCsum: sum, PayloadLen: len(payload),
		}))
	}
	if terr := r.WritePacket(stack.NetworkHeaderParams{Protocol: transProto, TTL: replyTTL}, pkt); terr != nil {
		return fmt.Errorf("write %v->%v: %v", src, dst, terr)
	}
	return nil
}

// openEchoFlow opens the host socket of a new echo flow and starts its
// reader. It returns nil, having answered or counted the request, if a
// limit or the host refused it.
func (s *Stack) openEchoFlow(f Flow, key echoKey, peer string, pkt *stack.PacketBuffer, msg []byte) *echoFlow {
	if !s.limits.admit(peer, key.dst, false) {
		s.stats.icmpLimited.Add(1)
		s.flowLog("%v: refused: flow limit reached for peer %s", f, peer)
		s.refuseEcho(peer, pkt, msg, key.src, key.dst)
		return nil
	}
	hc, raw, err := openPingSocket(key.dst)
	if err != nil {
		s.limits.flowDone(peer, key.dst)
		if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
			s.stats.icmpHostForbidden.Add(1)
			if !s.echoForbiddenLogged.Swap(true) {
				s.logf("icmp: echo requests are not forwarded (logged once): %v; "+
					"the host allows unprivileged ICMP sockets only to groups in net.ipv4.ping_group_range, "+
					"which does not hold this process's group (%d)", err, os.Getegid())
			}
			return nil
		}
		s.stats.icmpHostFailed.Add(1)
		s.flowLog("%v: dropped: %v", f, err)
		return nil
	}
	fl := &echoFlow{s: s, key: key, f: f, peer: peer, hc: hc, raw: raw, start: time.Now(), timeout: s.cfg.ICMPIdleTimeout}
	fl.fc.abortFn = func() { hc.Close() }
	fl.touch()

	s.mu.Lock()
	defer s.mu.Unlock()
	if other := s.echoFlows[key]; other != nil || s.closed {
		// Another packet of the same flow was quicker, or the stack
		// closed meanwhile.
		hc.Close()
		s.limits.flowDone(peer, key.dst)
		return other
	}
	s.echoFlows[key] = fl
	s.flows[&fl.fc] = struct{}{}
	s.stats.icmpFlows.Add(1)
	s.openICMP.Add(1)
	s.goLocked(fl.down)
	return fl
}

// openPingSocket opens an unprivileged ICMP (ICMPv6 for an IPv6 dst)
// socket connected to dst. Linux allows it to processes whose group is in
// net.ipv4.ping_group_range (that sysctl governs both families) and fails
// with EACCES otherwise. The socket sends echo requests only, with an
// identifier of the kernel's choice, and receives the matching replies,
// without the IP header.
func openPingSocket(dst netip.Addr) (net.Conn, syscall.RawConn, error) {
	family, proto := unix.AF_INET, unix.IPPROTO_ICMP
	var sa unix.Sockaddr
	if dst.Is4() {
		sa = &unix.SockaddrInet4{Addr: dst.As4()}
	} else {
		family, proto = unix.AF_INET6, unix.IPPROTO_ICMPV6
		sa = &unix.SockaddrInet6{Addr: dst.As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return nil, nil, fmt.Errorf("open icmp socket for %v: %w", dst, os.NewSyscallError("socket", err))
	}
	if err := unix.Connect(fd, sa); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("open icmp socket for %v: %w", dst, os.NewSyscallError("connect", err))
	}
	f := os.NewFile(uintptr(fd), "icmp:"+dst.String())
	pc, err := net.FilePacketConn(f)
	f.Close() // FilePacketConn holds a duplicate
	if err != nil {
		return nil, nil, fmt.Errorf("open icmp socket for %v: %w", dst, err)
	}
	c, ok := pc.(net.Conn)
	sc, ok2 := pc.(syscall.Conn)
	if !ok || !ok2 {
		pc.Close()
		return nil, nil, fmt.Errorf("open icmp socket for %v: unexpected %T", dst, pc)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		pc.Close()
		return nil, nil, fmt.Errorf("open icmp socket for %v: %w", dst, err)
	}
	return c, raw, nil
}

// echoFlow is one forwarded echo flow: a host ICMP socket connected to the
// destination. Requests are written to it from the packet path; its
// goroutine (down) relays the replies.
type echoFlow struct {
	s     *Stack
	key   echoKey
	f     Flow
	peer  string
	hc    net.Conn
	raw   syscall.RawConn
	fc    flowConn
	start time.Time
	// timeout is the idle timeout; last the time of the latest echo
	// either way, as time.Since(start).
	timeout time.Duration
	last    atomic.Int64
}

func (fl *echoFlow) touch() { fl.last.Store(int64(time.Since(fl.start))) }

// send writes one echo request (header and payload as the peer sent it)
// to the host socket without blocking: the packet path must not wait for
// a full socket buffer. The kernel sets its own identifier and checksum.
func (fl *echoFlow) send(msg []byte) {
	var werr error
	err := fl.raw.Write(func(fd uintptr) bool {
		for {
			_, werr = unix.Write(int(fd), msg)
			if werr != unix.EINTR {
				return true
			}
		}
	})
	if err == nil {
		err = werr
	}
	if err != nil {
		fl.s.stats.icmpHostFailed.Add(1)
		fl.s.flowLog("%v: send: %v", fl.f, err)
		return
	}
	fl.touch()
	fl.s.stats.icmpForwarded.Add(1)
}

// down relays the host's echo replies to the peer, with the peer's
// identifier, until the flow is idle for its timeout or aborted.
func (fl *echoFlow) down() {
	defer fl.done()
	read := hostReader(fl.hc, datagramBufs, false)
	reply := byte(header.ICMPv4EchoReply)
	if fl.key.dst.Is6() {
		reply = byte(header.ICMPv6EchoReply)
	}
	wait := fl.timeout
	for {
		fl.hc.SetReadDeadline(time.Now().Add(wait))
		b, n, err := read()
		var errno syscall.Errno
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			datagramBufs.putIfSet(b)
			idle := time.Since(fl.start) - time.Duration(fl.last.Load())
			if idle >= fl.timeout {
				fl.s.stats.icmpIdleClosed.Add(1)
				return
			}
			wait = fl.timeout - idle
			continue
		case errors.As(err, &errno) && hostICMPError(errno):
			// An ICMP error the host got for an earlier request
			// (unreachable, say), reported once by the socket; the
			// request is lost, the flow goes on.
			datagramBufs.putIfSet(b)
			fl.s.flowLog("%v: host: %v", fl.f, err)
			continue
		case err != nil:
			datagramBufs.putIfSet(b)
			return
		}
		msg := (*b)[:n]
		if len(msg) >= echoHeaderSize && msg[0] == reply && msg[1] == 0 {
			wait = fl.timeout
			fl.touch()
			header.ICMPv4(msg).SetIdent(fl.key.ident) // same offset in ICMPv6
			if err := fl.s.writeICMP(fl.key.dst, fl.key.src, msg); err != nil {
				fl.s.flowLog("%v: reply: %v", fl.f, err)
			} else {
				fl.s.stats.icmpReplies.Add(1)
			}
		}
		datagramBufs.put(b)
	}
}

// hostICMPError reports whether a read error of a ping socket is an ICMP
// error it received (Linux reports one per error, then reads go on).
func hostICMPError(errno syscall.Errno) bool {
	switch errno {
	case unix.EHOSTUNREACH, unix.ENETUNREACH, unix.ECONNREFUSED, unix.EMSGSIZE, unix.EPROTO,
		unix.EACCES, unix.EPERM, unix.ETIMEDOUT, unix.ENOPROTOOPT, unix.EOPNOTSUPP:
		return true
	}
	return false
}

// done releases the flow when its goroutine ends.
func (fl *echoFlow) done() {
	fl.fc.abort()
	s := fl.s
	s.mu.Lock()
	delete(s.flows, &fl.fc)
	if s.echoFlows[fl.key] == fl {
		delete(s.echoFlows, fl.key)
	}
	s.mu.Unlock()
	s.openICMP.Add(-1)
	s.limits.flowDone(fl.peer, fl.key.dst)
}
