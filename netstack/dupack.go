package netstack

import (
	"encoding/binary"
	"hash/maphash"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// dupAckWindows lets the stack's TCP senders see a Linux receiver's
// duplicate ACKs as duplicates.
//
// gVisor's sender (at the pinned version, snd.go isDupAck) counts an ACK
// as a duplicate only if its window equals the previous ACK's, SACK or
// not (RFC 5681's rule (e); RFC 6675 lets SACK replace it). A Linux
// receiver grows its window while it queues out-of-order data
// (tcp_grow_window runs for out-of-order segments too), so the ACKs that
// follow a loss carry new SACK blocks and a slightly larger window each
// time: each resets gVisor's duplicate count, fast retransmit never
// starts, and the loss is found only by the retransmission timeout. A
// stock Linux client downloading through the connector at 1% loss got
// 15-20 timeouts per 32 MiB download and under half the throughput of
// the same client through a kernel-forwarding gateway.
//
// So an inbound pure ACK that repeats the previous ACK's acknowledgment
// number, carries a SACK block above it, and offers a larger window than
// that ACK is delivered with the previous ACK's window (and its checksum
// adjusted). Offering a sender less window than the receiver has is
// always safe, and it lasts only until the next ACK that acknowledges new
// data, which passes unchanged. Only growth of up to a quarter is held,
// which is what queueing a segment adds: a window that shrank, was zero,
// or opened wide (the receiving application read a backlog, and the
// sender may be waiting for just that) passes unchanged.
//
// State is one slot per flow in a fixed table indexed by a hash of the
// 4-tuple: flows that collide just take turns, losing the adjustment,
// never anything else. A peer's packets can only update slots holding
// its own 4-tuples, since WireGuard admits only sources in its allowed
// IPs.
type dupAckWindows struct {
	seed  maphash.Seed
	slots [dupAckSlots]dupAckSlot
}

const dupAckSlots = 1024

type dupAckSlot struct {
	mu   sync.Mutex
	key  [36]byte // source and destination address (16 bytes each), ports
	ack  uint32
	win  uint16
	used bool
}

func newDupAckWindows() *dupAckWindows {
	return &dupAckWindows{seed: maphash.MakeSeed()}
}

// inspect looks at pkt, an inbound IP packet not yet parsed, and adjusts
// its TCP window as described on dupAckWindows. It reports whether it
// did.
func (d *dupAckWindows) inspect(pkt *stack.PacketBuffer) bool {
	// A pure ACK is headers only: the longest IPv4 header plus the longest
	// TCP header bounds it (IPv6 without extension headers fits too).
	size := pkt.Data().Size()
	if size > header.IPv4MaximumHeaderSize+header.TCPHeaderMaximumSize {
		return false
	}
	b, ok := pkt.Data().PullUp(size)
	if !ok || len(b) == 0 {
		return false
	}
	var key [36]byte
	var tcpOff int
	switch b[0] >> 4 {
	case 4:
		if len(b) < header.IPv4MinimumSize {
			return false
		}
		ip := header.IPv4(b)
		tcpOff = int(ip.HeaderLength())
		if ip.Protocol() != uint8(header.TCPProtocolNumber) || ip.More() || ip.FragmentOffset() != 0 ||
			tcpOff < header.IPv4MinimumSize || int(ip.TotalLength()) != len(b) {
			return false
		}
		copy(key[0:4], b[12:16])
		copy(key[16:20], b[16:20])
	case 6:
		if len(b) < header.IPv6MinimumSize {
			return false
		}
		ip := header.IPv6(b)
		if ip.NextHeader() != uint8(header.TCPProtocolNumber) || int(ip.PayloadLength())+header.IPv6MinimumSize != len(b) {
			return false
		}
		tcpOff = header.IPv6MinimumSize
		copy(key[0:16], b[8:24])
		copy(key[16:32], b[24:40])
	default:
		return false
	}
	if len(b) < tcpOff+header.TCPMinimumSize {
		return false
	}
	t := header.TCP(b[tcpOff:])
	dataOff := int(t.DataOffset())
	if dataOff < header.TCPMinimumSize || tcpOff+dataOff != len(b) {
		return false // carries data, or malformed
	}
	if f := t.Flags(); !f.Contains(header.TCPFlagAck) ||
		f.Intersects(header.TCPFlagSyn|header.TCPFlagFin|header.TCPFlagRst|header.TCPFlagPsh|header.TCPFlagUrg) {
		return false // not a pure ACK
	}
	copy(key[32:36], b[tcpOff:tcpOff+4])
	ack, win := t.AckNumber(), t.WindowSize()

	s := &d.slots[maphash.Bytes(d.seed, key[:])%dupAckSlots]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.used && s.key == key && s.ack == ack && win > s.win && win-s.win <= s.win/4 && sacksAbove(t.Options(), ack) {
		setWindow(t, s.win)
		return true
	}
	s.key, s.ack, s.win, s.used = key, ack, win, true
	return false
}

// sacksAbove reports whether TCP options opts hold a SACK block above
// ack: data the receiver holds beyond a hole, the state Linux grows its
// window in. A D-SACK block (RFC 2883, below ack: a duplicate received)
// does not count; it answers a retransmission, and a sender may be
// waiting for exactly the window such an ACK brings.
func sacksAbove(opts []byte, ack uint32) bool {
	for i := 0; i < len(opts); {
		switch opts[i] {
		case header.TCPOptionEOL:
			return false
		case header.TCPOptionNOP:
			i++
			continue
		}
		if i+1 >= len(opts) || opts[i+1] < 2 || i+int(opts[i+1]) > len(opts) {
			return false
		}
		if opts[i] == header.TCPOptionSACK {
			for b := i + 2; b+8 <= i+int(opts[i+1]); b += 8 {
				if start := binary.BigEndian.Uint32(opts[b:]); int32(start-ack) > 0 {
					return true
				}
			}
		}
		i += int(opts[i+1])
	}
	return false
}

// setWindow sets t's window field to win and updates its checksum
// incrementally (RFC 1624, eqn. 3).
func setWindow(t header.TCP, win uint16) {
	old := binary.BigEndian.Uint16(t[header.TCPWinSizeOffset:])
	binary.BigEndian.PutUint16(t[header.TCPWinSizeOffset:], win)
	sum := uint32(^t.Checksum()) + uint32(^old) + uint32(win)
	sum = (sum & 0xffff) + sum>>16
	sum = (sum & 0xffff) + sum>>16
	t.SetChecksum(^uint16(sum))
}
