package wireguard

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

// batchConn is what ipv4.PacketConn and ipv6.PacketConn have in common
// (ipv4.Message and ipv6.Message are the same type).
type batchConn interface {
	ReadBatch(ms []ipv6.Message, flags int) (int, error)
	WriteBatch(ms []ipv6.Message, flags int) (int, error)
}

// msgBatch is a reusable set of messages for one batch call; one backs
// the single-buffer lists of received messages.
type msgBatch struct {
	ms  []ipv6.Message
	one [][]byte
}

// reset drops every reference to callers' buffers.
func (mb *msgBatch) reset() {
	for i := range mb.ms {
		mb.ms[i].Buffers, mb.ms[i].Addr = nil, nil
		mb.ms[i].OOB = mb.ms[i].OOB[:0]
	}
	clear(mb.one)
}

// Bind is a wireguard-go conn.Bind on one UDP socket bound to a chosen host
// address, such as 127.0.0.1 or one address of a multi-homed host
// (wireguard-go's own bind always listens on the wildcard address). Reads
// and writes move up to conn.IdealBatchSize datagrams per system call
// (recvmmsg and sendmmsg). It is safe for concurrent use.
type Bind struct {
	addr netip.Addr

	msgs sync.Pool // of *msgBatch

	// txOffload and rxOffload: the socket segments runs of datagrams on
	// send (UDP_SEGMENT) and coalesces them on receive (UDP_GRO).
	txOffload, rxOffload atomic.Bool

	mu sync.Mutex // guards the fields after it
	uc *net.UDPConn
	bc batchConn
}

var _ conn.Bind = (*Bind)(nil)

// NewBind returns a Bind that listens on addr; the port comes from Open (that
// is, from wireguard-go's listen_port). addr must be a valid IP address; it
// may be unspecified (0.0.0.0 or ::) to listen on all addresses of one
// family.
func NewBind(addr netip.Addr) (*Bind, error) {
	if !addr.IsValid() {
		return nil, errors.New("wireguard: invalid listen address")
	}
	b := &Bind{addr: addr.Unmap()}
	b.msgs.New = func() any {
		mb := &msgBatch{ms: make([]ipv6.Message, conn.IdealBatchSize), one: make([][]byte, conn.IdealBatchSize)}
		for i := range mb.ms {
			mb.ms[i].OOB = make([]byte, 0, max(oobSize, 64))
		}
		return mb
	}
	return b, nil
}

// Open listens on the Bind's address and port and returns one receive
// function. Port 0 picks a free port, which is returned.
func (b *Bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.uc != nil {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	network := "udp4"
	if b.addr.Is6() {
		network = "udp6"
	}
	laddr := net.UDPAddrFromAddrPort(netip.AddrPortFrom(b.addr, port))
	uc, err := net.ListenUDP(network, laddr)
	if err != nil {
		return nil, 0, fmt.Errorf("wireguard: listen %v: %w", laddr, err)
	}
	setBuffers(uc)
	tx, rx := enableOffload(uc)
	b.txOffload.Store(tx)
	b.rxOffload.Store(rx)
	b.uc = uc
	if network == "udp4" {
		b.bc = ipv4.NewPacketConn(uc)
	} else {
		b.bc = ipv6.NewPacketConn(uc)
	}
	actual := uint16(uc.LocalAddr().(*net.UDPAddr).Port)
	bc := b.bc
	recv := func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		return b.receive(bc, bufs, sizes, eps)
	}
	return []conn.ReceiveFunc{recv}, actual, nil
}

func (b *Bind) receive(bc batchConn, bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
	mb := b.msgs.Get().(*msgBatch)
	defer func() { mb.reset(); b.msgs.Put(mb) }()
	gro := b.rxOffload.Load()
	// With coalescing, one buffer may hold up to maxSegments datagrams:
	// read into the last few buffers and split into all of them.
	first := 0
	if gro {
		first = len(bufs) - max(len(bufs)/maxSegments, 1)
	}
	ms := mb.ms[:min(len(bufs)-first, len(mb.ms))]
	for i := range ms {
		mb.one[i] = bufs[first+i]
		ms[i].Buffers = mb.one[i : i+1 : i+1]
		ms[i].OOB = ms[i].OOB[:cap(ms[i].OOB)]
		ms[i].N, ms[i].NN, ms[i].Addr = 0, 0, nil
	}
	n, err := bc.ReadBatch(ms, 0)
	if err != nil {
		return 0, err
	}
	out := 0
	for i := 0; i < n && out < len(bufs); i++ {
		ua, ok := ms[i].Addr.(*net.UDPAddr)
		if !ok {
			continue
		}
		ep := &Endpoint{ap: ua.AddrPort(), ua: ua}
		data := bufs[first+i][:ms[i].N]
		seg := 0
		if gro {
			seg = groSize(ms[i].OOB[:ms[i].NN])
		}
		if seg <= 0 || seg >= len(data) {
			if out != first+i {
				copy(bufs[out], data)
			}
			sizes[out], eps[out] = len(data), ep
			out++
			continue
		}
		// Split a coalesced buffer; the datagrams are in order and
		// earlier buffers are free, so copying forward never overwrites
		// unread data.
		for off := 0; off < len(data) && out < len(bufs); off += seg {
			end := min(off+seg, len(data))
			sizes[out] = copy(bufs[out], data[off:end])
			eps[out] = ep
			out++
		}
	}
	return out, nil
}

// Close closes the socket. Receive functions then return net.ErrClosed.
// Closing a closed Bind does nothing.
func (b *Bind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.uc == nil {
		return nil
	}
	err := b.uc.Close()
	b.uc, b.bc = nil, nil
	return err
}

// SetMark sets SO_MARK on the socket (Linux; needs CAP_NET_ADMIN unless
// mark is 0).
func (b *Bind) SetMark(mark uint32) error {
	b.mu.Lock()
	uc := b.uc
	b.mu.Unlock()
	if uc == nil {
		return nil
	}
	return setMark(uc, mark)
}

// Send writes bufs to ep in as few system calls as the kernel allows.
func (b *Bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	e, ok := ep.(*Endpoint)
	if !ok {
		return conn.ErrWrongEndpointType
	}
	b.mu.Lock()
	bc := b.bc
	b.mu.Unlock()
	if bc == nil {
		return net.ErrClosed
	}
	if e.ap.Addr().Is4() != b.addr.Is4() {
		return fmt.Errorf("wireguard: send to %v from %v: %w", e.ap, b.addr, syscall.EAFNOSUPPORT)
	}
	mb := b.msgs.Get().(*msgBatch)
	defer func() { mb.reset(); b.msgs.Put(mb) }()
	err := b.send(bc, mb.ms, bufs, e, b.txOffload.Load())
	if err != nil && b.txOffload.Load() && errors.Is(err, unix.EIO) {
		// The kernel or device refused segmentation: do without.
		b.txOffload.Store(false)
		err = b.send(bc, mb.ms, bufs, e, false)
	}
	return err
}

// send writes bufs to e with messages from ms; with gso, each run of
// equal-sized buffers (the last may be shorter) goes as one message.
func (b *Bind) send(bc batchConn, ms []ipv6.Message, bufs [][]byte, e *Endpoint, gso bool) error {
	for len(bufs) > 0 {
		k := 0
		for k < len(ms) && len(bufs) > 0 {
			run := 1
			if gso {
				size, total := len(bufs[0]), len(bufs[0])
				for run < len(bufs) && run < maxSegments && total+len(bufs[run]) <= maxRun && len(bufs[run]) <= size {
					total += len(bufs[run])
					run++
					if len(bufs[run-1]) < size {
						break // a shorter one ends the run
					}
				}
			}
			m := &ms[k]
			m.Buffers = bufs[:run:run]
			m.Addr = e.ua
			m.OOB = m.OOB[:0]
			if run > 1 {
				m.OOB = putSegmentSize(m.OOB, len(bufs[0]))
			}
			bufs = bufs[run:]
			k++
		}
		for sent := 0; sent < k; {
			n, err := bc.WriteBatch(ms[sent:k], 0)
			if err != nil {
				return fmt.Errorf("wireguard: send to %v: %w", e.ap, err)
			}
			sent += n
		}
	}
	return nil
}

// ParseEndpoint parses "ip:port".
func (b *Bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, fmt.Errorf("wireguard: endpoint %q: %w", s, err)
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	return &Endpoint{ap: ap, ua: net.UDPAddrFromAddrPort(ap)}, nil
}

// BatchSize is conn.IdealBatchSize.
func (b *Bind) BatchSize() int { return conn.IdealBatchSize }

// Endpoint is a peer's address as seen by a Bind.
type Endpoint struct {
	ap netip.AddrPort
	ua *net.UDPAddr
}

var _ conn.Endpoint = (*Endpoint)(nil)

// ClearSrc does nothing: the source is always the Bind's address.
func (e *Endpoint) ClearSrc() {}

// SrcToString returns "": the source is the Bind's address.
func (e *Endpoint) SrcToString() string { return "" }

// DstToString returns the peer's "ip:port".
func (e *Endpoint) DstToString() string { return e.ap.String() }

// DstToBytes returns the peer's address and port in a stable binary form
// (used for WireGuard cookies).
func (e *Endpoint) DstToBytes() []byte {
	b, _ := e.ap.MarshalBinary()
	return b
}

// DstIP returns the peer's IP.
func (e *Endpoint) DstIP() netip.Addr { return e.ap.Addr() }

// SrcIP returns the zero Addr.
func (e *Endpoint) SrcIP() netip.Addr { return netip.Addr{} }
