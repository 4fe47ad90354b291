// Package tun connects wireguard-go to a gVisor network stack without a
// kernel TUN device.
//
// A Device is two things at once: a wireguard-go tun.Device (the side
// wireguard-go reads plaintext packets from and writes decrypted packets to)
// and, through LinkEndpoint, a gVisor link endpoint (the side the userspace
// stack sends packets on and receives them from).
//
// Packets from the stack to WireGuard wait in a bounded queue. When the
// queue is full the stack's writer blocks until WireGuard reads (backpressure);
// nothing is dropped because a queue was full. Read hands WireGuard up to
// BatchSize packets per call so its batched encryption and UDP paths engage.
// Packets from WireGuard to the stack are delivered synchronously in the
// caller's goroutine.
//
// TCP is offloaded in both directions unless Config.NoOffload is set: the
// stack sends large TCP packets that Read cuts into MTU-sized segments, and
// Write joins consecutive segments of a flow before the stack sees them
// (see offload.go).
package tun

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	wgtun "golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

const (
	// DefaultMTU is the MTU used when Config.MTU is zero. It is the usual
	// WireGuard MTU: 1500 minus the largest (IPv6) encapsulation overhead.
	DefaultMTU = 1420
	// DefaultQueueLen is the outbound queue length used when
	// Config.QueueLen is zero.
	DefaultQueueLen = 1024
	// DefaultBatchSize is the batch size used when Config.BatchSize is zero.
	// It matches wireguard-go's conn.IdealBatchSize.
	DefaultBatchSize = 128

	minMTU = 576
	maxMTU = 65535
)

// Config configures a Device. The zero value is usable.
type Config struct {
	// MTU is the largest IP packet, in bytes, the device carries in either
	// direction. Zero means DefaultMTU. IPv6 needs at least 1280.
	MTU int
	// QueueLen bounds the number of packets waiting for WireGuard to read
	// them. Zero means DefaultQueueLen.
	QueueLen int
	// BatchSize is the most packets one Read returns and the value of
	// BatchSize(). Zero means DefaultBatchSize.
	BatchSize int
	// Name is what Name returns. Empty means "appconnector".
	Name string
	// NoOffload makes the stack build every TCP segment itself and
	// deliver inbound segments one by one, instead of handing Read large
	// packets to segment and having Write coalesce runs of segments. It
	// exists for comparison; offload is cheaper.
	NoOffload bool
}

// Stats are counters of a Device. Every packet that does not reach its
// destination is counted in one of the Dropped fields.
type Stats struct {
	// InboundPackets were delivered from WireGuard to the stack.
	InboundPackets uint64
	// InboundBytes is the IP-level size of InboundPackets.
	InboundBytes uint64
	// InboundDropped were written by WireGuard but were not IPv4 or IPv6,
	// or arrived before the stack attached or after Close.
	InboundDropped uint64
	// OutboundPackets were read by WireGuard.
	OutboundPackets uint64
	// OutboundBytes is the IP-level size of OutboundPackets.
	OutboundBytes uint64
	// OutboundDropped were queued by the stack but did not fit the buffer
	// WireGuard passed to Read, or were still queued at Close.
	OutboundDropped uint64
	// OutboundBlocked counts the times the stack had to wait because the
	// outbound queue was full.
	OutboundBlocked uint64
}

// Device is a wireguard-go tun.Device backed by a gVisor link endpoint.
// All methods are safe for concurrent use.
type Device struct {
	mtu       int
	batchSize int
	name      string

	events chan wgtun.Event
	// out holds packets from the stack, each with one reference owned by
	// the queue.
	out       chan *stack.PacketBuffer
	closed    chan struct{}
	closeOnce sync.Once
	// sendMu orders queueing against Close: enqueue holds it shared from
	// its closed check to its send, Close takes it exclusively after
	// closing closed, so nothing is queued after Close has drained.
	sendMu sync.RWMutex

	mu sync.RWMutex // guards the fields after it
	// dispatcher is the stack's NIC, or nil before Attach and after detach.
	dispatcher stack.NetworkDispatcher

	inPackets, inBytes, inDropped    atomic.Uint64
	outPackets, outBytes, outDropped atomic.Uint64
	outBlocked                       atomic.Uint64

	// readMu serializes Reads; it guards seg, the offloaded packet being
	// cut into segments, which may span Reads.
	readMu sync.Mutex
	seg    segmenter
	// noOffload turns off segmentation and receive coalescing.
	noOffload bool

	link linkEndpoint
}

var _ wgtun.Device = (*Device)(nil)

// New returns a Device. It reports EventUp on Events at once.
func New(cfg Config) (*Device, error) {
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = DefaultMTU
	}
	if mtu < minMTU || mtu > maxMTU {
		return nil, fmt.Errorf("tun: mtu %d out of range %d..%d", mtu, minMTU, maxMTU)
	}
	qlen := cfg.QueueLen
	if qlen == 0 {
		qlen = DefaultQueueLen
	}
	if qlen < 0 {
		return nil, fmt.Errorf("tun: negative queue length %d", qlen)
	}
	batch := cfg.BatchSize
	if batch == 0 {
		batch = DefaultBatchSize
	}
	if batch < 1 {
		return nil, fmt.Errorf("tun: batch size %d, want >= 1", batch)
	}
	name := cfg.Name
	if name == "" {
		name = "appconnector"
	}
	d := &Device{
		mtu:       mtu,
		batchSize: batch,
		name:      name,
		events:    make(chan wgtun.Event, 1),
		out:       make(chan *stack.PacketBuffer, qlen),
		closed:    make(chan struct{}),
		noOffload: cfg.NoOffload,
	}
	d.link.d = d
	d.events <- wgtun.EventUp
	return d, nil
}

// File returns nil: there is no file descriptor behind a Device.
func (d *Device) File() *os.File { return nil }

// Name returns the name given in Config.
func (d *Device) Name() (string, error) { return d.name, nil }

// MTU returns the configured MTU.
func (d *Device) MTU() (int, error) { return d.mtu, nil }

// BatchSize returns the most packets one Read returns or one Write should
// be given. It never changes.
func (d *Device) BatchSize() int { return d.batchSize }

// Events returns the channel of device events. It carries EventUp once and
// is closed by Close.
func (d *Device) Events() <-chan wgtun.Event { return d.events }

// Read blocks until the stack has sent at least one packet, then copies up
// to min(len(bufs), BatchSize()) packets into bufs[i][offset:] and their
// lengths into sizes[i]. len(sizes) must be >= len(bufs), and each buffer
// should hold at least MTU bytes after offset. A large TCP packet the stack
// handed over for segmentation comes out as MTU-sized segments, possibly
// spread over several Reads. After Close it returns os.ErrClosed. Reads
// are serialized.
func (d *Device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	limit := min(len(bufs), d.batchSize)
	d.readMu.Lock()
	defer d.readMu.Unlock()
	select {
	case <-d.closed:
		return 0, os.ErrClosed
	default:
	}
	n := 0
	for n < limit {
		if d.seg.pkt != nil {
			n += d.segmentOut(bufs[n:limit], sizes[n:limit], offset)
			continue
		}
		var pkt *stack.PacketBuffer
		if n == 0 {
			// Nothing to return yet (or every packet so far was
			// dropped): wait.
			select {
			case pkt = <-d.out:
			case <-d.closed:
				return 0, os.ErrClosed
			}
		} else {
			select {
			case pkt = <-d.out:
			default:
				return n, nil
			}
		}
		if offloaded(pkt) {
			if !d.seg.start(pkt, d.mtu) {
				pkt.DecRef()
				d.outDropped.Add(1)
			}
			continue
		}
		if d.copyOut(pkt, bufs[n], offset, &sizes[n]) {
			n++
		}
	}
	return n, nil
}

// segmentOut emits the pending offloaded packet's next segments into bufs
// and returns how many it wrote, releasing the packet once all are out.
// The caller holds readMu.
func (d *Device) segmentOut(bufs [][]byte, sizes []int, offset int) int {
	n := 0
	for n < len(bufs) && !d.seg.done() {
		b := bufs[n][offset:]
		if len(b) < d.seg.hdrLen+min(d.seg.mss, d.seg.total-d.seg.next) {
			// The rest of the packet cannot be delivered.
			d.outDropped.Add(1)
			d.seg.release()
			return n
		}
		sizes[n] = d.seg.emit(b)
		d.outPackets.Add(1)
		d.outBytes.Add(uint64(sizes[n]))
		n++
	}
	if d.seg.done() {
		d.seg.release()
	}
	return n
}

// copyOut copies pkt into buf[offset:], releases pkt and reports whether it
// fit.
func (d *Device) copyOut(pkt *stack.PacketBuffer, buf []byte, offset int, size *int) bool {
	defer pkt.DecRef()
	if pkt.Size() > len(buf)-offset {
		d.outDropped.Add(1)
		return false
	}
	n := readAt(pkt, buf[offset:], 0)
	*size = n
	d.outPackets.Add(1)
	d.outBytes.Add(uint64(n))
	return true
}

// Write delivers each packet bufs[i][offset:] to the stack and returns
// len(bufs). Empty packets are skipped. Packets that are not IPv4 or IPv6
// are counted as dropped; the first such packet's error is returned after
// the rest of the batch has been delivered. After Close it returns
// os.ErrClosed.
func (d *Device) Write(bufs [][]byte, offset int) (int, error) {
	select {
	case <-d.closed:
		return 0, os.ErrClosed
	default:
	}
	d.mu.RLock()
	disp := d.dispatcher
	d.mu.RUnlock()
	var coalesce *coalescer
	if disp != nil && !d.noOffload {
		coalesce = coalescers.Get().(*coalescer)
		coalesce.disp = disp
		defer func() {
			coalesce.flush()
			coalesce.disp = nil
			coalescers.Put(coalesce)
		}()
	}
	var firstErr error
	for _, b := range bufs {
		if len(b) <= offset {
			continue
		}
		pkt := b[offset:]
		var proto tcpip.NetworkProtocolNumber
		switch pkt[0] >> 4 {
		case 4:
			proto = header.IPv4ProtocolNumber
		case 6:
			proto = header.IPv6ProtocolNumber
		default:
			d.inDropped.Add(1)
			if firstErr == nil {
				firstErr = fmt.Errorf("tun: write: ip version %d: %w", pkt[0]>>4, errors.ErrUnsupported)
			}
			continue
		}
		if disp == nil {
			d.inDropped.Add(1)
			continue
		}
		pb := stack.NewPacketBuffer(stack.PacketBufferOptions{
			Payload: buffer.MakeWithData(pkt),
		})
		if coalesce != nil {
			pb.NetworkProtocolNumber = proto
			coalesce.gro.Enqueue(pb)
		} else {
			disp.DeliverNetworkPacket(proto, pb)
		}
		pb.DecRef()
		d.inPackets.Add(1)
		d.inBytes.Add(uint64(len(pkt)))
	}
	return len(bufs), firstErr
}

// Close stops the device: pending and future Reads return os.ErrClosed,
// writers blocked on a full queue return, queued packets are released and
// the Events channel is closed. Close is idempotent.
func (d *Device) Close() error {
	d.closeOnce.Do(func() {
		close(d.closed)
		close(d.events)
		d.sendMu.Lock() // wait out enqueues that passed their closed check
		d.sendMu.Unlock()
		for {
			select {
			case pkt := <-d.out:
				pkt.DecRef()
				d.outDropped.Add(1)
			default:
				d.readMu.Lock() // a Read in progress sees closed and returns
				if d.seg.pkt != nil {
					d.outDropped.Add(1)
					d.seg.release()
				}
				d.readMu.Unlock()
				return
			}
		}
	})
	return nil
}

// Stats returns a snapshot of the device's counters.
func (d *Device) Stats() Stats {
	return Stats{
		InboundPackets:  d.inPackets.Load(),
		InboundBytes:    d.inBytes.Load(),
		InboundDropped:  d.inDropped.Load(),
		OutboundPackets: d.outPackets.Load(),
		OutboundBytes:   d.outBytes.Load(),
		OutboundDropped: d.outDropped.Load(),
		OutboundBlocked: d.outBlocked.Load(),
	}
}

// enqueue queues pkt (taking a reference) for Read, waiting while the queue
// is full. It fails only once the device is closed.
func (d *Device) enqueue(pkt *stack.PacketBuffer) tcpip.Error {
	d.sendMu.RLock()
	defer d.sendMu.RUnlock()
	select {
	case <-d.closed:
		return &tcpip.ErrClosedForSend{}
	default:
	}
	pkt.IncRef()
	select {
	case d.out <- pkt:
		return nil
	default:
	}
	d.outBlocked.Add(1)
	select {
	case d.out <- pkt:
		return nil
	case <-d.closed:
		pkt.DecRef()
		return &tcpip.ErrClosedForSend{}
	}
}
