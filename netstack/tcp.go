package netstack

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// keepaliveIdle is how long a forwarded TCP flow may be silent before the
// stack probes the peer, so flows from peers that vanished end.
const keepaliveIdle = 5 * time.Minute

// growFrame is the frame growStack puts on the stack.
const growFrame = 8 << 10

// handleTCP is the stack's TCP handler for segments that match no
// endpoint. A SYN the policy refuses returns false, so the stack answers
// it with a RST; no goroutine is started and nothing is dialed. Allowed
// SYNs go to the gVisor forwarder, which calls forwardTCP.
func (s *Stack) handleTCP(fwd *tcp.Forwarder, id stack.TransportEndpointID, pkt *stack.PacketBuffer) bool {
	h := header.TCP(pkt.TransportHeader().Slice())
	if len(h) < header.TCPMinimumSize {
		return false
	}
	if flags := h.Flags(); !flags.Contains(header.TCPFlagSyn) || flags.Intersects(header.TCPFlagAck|header.TCPFlagRst) {
		// Not a connection request: let the stack answer with a RST.
		return false
	}
	if !s.allow(flowOf(TCP, id)) {
		s.stats.tcpRefused.Add(1)
		return false
	}
	return fwd.HandlePacket(id, pkt)
}

// forwardTCP runs in a goroutine started by the gVisor forwarder for each
// allowed SYN. It dials the host first and completes the peer's handshake
// only if that succeeded; on any failure the peer gets a RST.
func (s *Stack) forwardTCP(r *tcp.ForwarderRequest) {
	growStack()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		r.Complete(true)
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	f := flowOf(TCP, r.ID())
	peer := s.peerOf(f.Src.Addr())
	if !s.limits.admit(peer, f.Dst.Addr(), true) {
		s.stats.tcpLimited.Add(1)
		s.flowLog("%v: refused: dial or flow limit reached for peer %s", f, peer)
		s.refused(f, EndLimit, "")
		r.Complete(true)
		return
	}
	s.openTCP.Add(1)
	defer s.openTCP.Add(-1)
	start := time.Now()
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.DialTimeout)
	hc, err := s.dial(ctx, "tcp", f.Dst.String())
	cancel()
	if err != nil {
		s.limits.dialDone(peer)
		s.limits.flowDone(peer, f.Dst.Addr())
		s.stats.tcpDialFailed.Add(1)
		s.stats.dialFailed[dialFailure(err)].Add(1)
		s.flowLog("%v: reset: %v", f, err)
		s.refused(f, EndDialFailed, DialFailureNames[dialFailure(err)])
		r.Complete(true)
		return
	}

	// Complete the peer's handshake. CreateEndpoint waits for the peer's
	// ACK, and gVisor would retransmit its SYN-ACK for about two minutes;
	// a peer that never answers must not pin the host connection and the
	// dial slot that long, so the handshake gets the dial's deadline too.
	var wq waiter.Queue
	id := r.ID()
	netProto := header.IPv4ProtocolNumber
	if f.Dst.Addr().Is6() {
		netProto = header.IPv6ProtocolNumber
	}
	giveUp := time.AfterFunc(s.cfg.DialTimeout, func() {
		if e := s.stack.FindTransportEndpoint(netProto, tcp.ProtocolNumber, id, nicID); e != nil {
			e.Abort()
		}
	})
	ep, terr := r.CreateEndpoint(&wq)
	giveUp.Stop()
	s.limits.dialDone(peer)
	if terr != nil {
		hc.Close()
		s.limits.flowDone(peer, f.Dst.Addr())
		s.stats.handlerFailures.Add(1)
		s.flowLog("%v: reset: complete handshake: %v", f, terr)
		s.refused(f, EndPeerReset, "handshake")
		r.Complete(true)
		return
	}
	r.Complete(false)
	s.stats.tcpForwarded.Add(1)
	ep.SocketOptions().SetKeepAlive(true)
	idle := tcpip.KeepaliveIdleOption(keepaliveIdle)
	ep.SetSockOpt(&idle)

	pc := gonet.NewTCPConn(&wq, ep)
	fc := &flowConn{acct: &flowAccount{f: f, start: start}, abortFn: func() {
		if tc, ok := hc.(interface{ SetLinger(int) error }); ok {
			tc.SetLinger(0) // close with RST
		}
		hc.Close()
		ep.Abort()
	}}
	defer s.limits.flowDone(peer, f.Dst.Addr())
	if !s.track(fc) {
		fc.abort()
		return
	}
	defer s.untrack(fc)
	readPeer, stop := peerReader(ep, &wq, pc, streamBufs)
	defer stop()
	s.proxyTCP(fc, ep, pc, readPeer, hc)
	if rec, ok := fc.acct.final(EndClosed); ok {
		s.record(rec)
	}
}

// growStackFlag is never set, and growSink never written: growStack
// reads the one and could write the other, so that the compiler keeps
// growStack's frame.
var (
	growStackFlag bool
	growSink      byte
)

// growStack makes the calling goroutine's stack big enough, in one step,
// for a flow's host dial and handshake. The gVisor forwarder starts a new
// goroutine per SYN with a small stack, and the dial and the handshake
// each outgrew it: every connection paid for two stack copies, each
// walking the frames already on the stack (~5% of the connector's CPU
// when opening connections). Growing while the stack is still shallow
// costs one cheap copy. The runtime shrinks the stack again at a garbage
// collection if the flow then sits idle.
//
//go:noinline
func growStack() {
	var frame [growFrame]byte
	if growStackFlag {
		frame[growSink] = growSink
		growSink = frame[len(frame)-1-int(growSink)]
	}
}

// proxyTCP copies both ways between the peer's connection pc (read
// through readPeer) and the host connection hc. A FIN in one direction
// becomes a half-close on the other side; an error in either direction (a
// RST, a failed write, a dead peer) resets both at once, so neither side
// waits on a partner that is gone.
func (s *Stack) proxyTCP(fc *flowConn, ep tcpip.Endpoint, pc *gonet.TCPConn, readPeer readFunc, hc net.Conn) {
	up := make(chan error, 1)
	var downDone atomic.Bool
	acct := fc.acct
	s.mu.Lock()
	started := s.goLocked(func() {
		peerSide, err := copyStream(hc, readPeer, streamBufs, func() error {
			if downDone.Load() {
				// The host has already ended its side and
				// everything it sent was read: the Close below
				// sends the FIN, and a shutdown first would be one
				// more system call for nothing.
				return nil
			}
			return closeWrite(hc)
		}, &acct.up)
		if err != nil {
			if peerSide {
				acct.setEnd(peerEnd(err))
			} else {
				acct.setEnd(hostEnd(err))
			}
			fc.abort() // the host may be idle: wake the other direction
		}
		up <- err
	})
	s.mu.Unlock()
	if !started {
		acct.setEnd(EndShutdown)
		fc.abort()
		return
	}
	hostSide, downErr := copyStream(pc, hostReader(hc, streamBufs, true), streamBufs, pc.CloseWrite, &acct.down)
	if downErr != nil {
		if hostSide {
			acct.setEnd(hostEnd(downErr))
		} else {
			acct.setEnd(peerEnd(downErr))
		}
		fc.abort()
	} else {
		downDone.Store(true)
	}
	if upErr := <-up; upErr != nil || downErr != nil {
		return
	}
	hc.Close()
	pc.Close()
}

// flowConn is an open forwarded flow, tracked so Close can abort it.
type flowConn struct {
	once    sync.Once
	abortFn func()
	acct    *flowAccount // for FlowRecords; nil for echo flows
}

// abort tears the flow down at once (RST for TCP). It is idempotent.
func (f *flowConn) abort() { f.once.Do(f.abortFn) }

// track registers f for abort on Close; it reports false if the Stack is
// already closed.
func (s *Stack) track(f *flowConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.flows[f] = struct{}{}
	return true
}

func (s *Stack) untrack(f *flowConn) {
	s.mu.Lock()
	delete(s.flows, f)
	s.mu.Unlock()
}

// Reasons a host dial fails, as counted in Stats.DialFailures.
const (
	DialRefused     = iota // the host answered with a reset (ECONNREFUSED)
	DialTimeout            // no answer within the dial timeout
	DialUnreachable        // no route, or ICMP unreachable (EHOSTUNREACH, ENETUNREACH)
	DialOther              // anything else
	numDialFailures
)

// DialFailureNames name the DialRefused... reasons, for metrics and logs.
var DialFailureNames = [numDialFailures]string{"refused", "timeout", "unreachable", "other"}

func dialFailure(err error) int {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return DialRefused
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return DialTimeout
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return DialUnreachable
	}
	return DialOther
}
