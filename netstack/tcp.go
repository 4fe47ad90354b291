package netstack

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
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

// copyBufSize is the size of the buffers that carry forwarded TCP data.
const copyBufSize = 32 << 10

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

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
	if !s.limits.admit(peer, true) {
		s.stats.tcpLimited.Add(1)
		s.flowLog.printf("%v: refused: dial or flow limit reached for peer %s", f, peer)
		r.Complete(true)
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.DialTimeout)
	hc, err := s.dialer.DialContext(ctx, "tcp", f.Dst.String())
	cancel()
	s.limits.dialDone(peer)
	if err != nil {
		s.limits.flowDone(peer)
		s.stats.tcpDialFailed.Add(1)
		s.flowLog.printf("%v: reset: %v", f, err)
		r.Complete(true)
		return
	}

	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		hc.Close()
		s.limits.flowDone(peer)
		s.stats.handlerFailures.Add(1)
		s.flowLog.printf("%v: reset: complete handshake: %v", f, terr)
		r.Complete(true)
		return
	}
	r.Complete(false)
	s.stats.tcpForwarded.Add(1)
	ep.SocketOptions().SetKeepAlive(true)
	idle := tcpip.KeepaliveIdleOption(keepaliveIdle)
	ep.SetSockOpt(&idle)

	pc := gonet.NewTCPConn(&wq, ep)
	fc := &flowConn{abortFn: func() {
		if tc, ok := hc.(interface{ SetLinger(int) error }); ok {
			tc.SetLinger(0) // close with RST
		}
		hc.Close()
		ep.Abort()
	}}
	defer s.limits.flowDone(peer)
	if !s.track(fc) {
		fc.abort()
		return
	}
	defer s.untrack(fc)
	s.proxyTCP(fc, pc, hc)
}

// proxyTCP copies both ways between the peer's connection pc and the host
// connection hc. A FIN in one direction becomes a half-close on the other
// side; an error in either direction (a RST, a failed write) resets both.
func (s *Stack) proxyTCP(fc *flowConn, pc *gonet.TCPConn, hc net.Conn) {
	up := make(chan error, 1)
	s.mu.Lock()
	started := s.goLocked(func() { up <- copyHalf(hc, pc) })
	s.mu.Unlock()
	if !started {
		fc.abort()
		return
	}
	downErr := copyHalf(pc, hc)
	if downErr != nil {
		fc.abort()
	}
	upErr := <-up
	if upErr != nil {
		fc.abort()
		return
	}
	if downErr == nil {
		pc.Close()
		hc.Close()
	}
}

// copyHalf copies src to dst until src ends, then half-closes dst. It
// returns nil only if src ended cleanly and the half-close worked.
func copyHalf(dst, src net.Conn) error {
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	buf := *bp
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if errors.Is(err, io.EOF) {
			if cw, ok := dst.(interface{ CloseWrite() error }); ok {
				return cw.CloseWrite()
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// flowConn is an open forwarded flow, tracked so Close can abort it.
type flowConn struct {
	once    sync.Once
	abortFn func()
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
