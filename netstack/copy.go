package netstack

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/waiter"
)

// A forwarded flow holds no copy buffer while it is idle: each direction
// first waits until its source has data, then takes a buffer from a pool,
// reads, writes and gives the buffer back. A peer that opens many quiet
// flows costs sockets and goroutines, not 2×64 KiB of buffers each.

// bufPool is a pool of equal-sized byte slices.
type bufPool struct {
	p sync.Pool
}

func newBufPool(size int) *bufPool {
	bp := &bufPool{}
	bp.p.New = func() any { b := make([]byte, size); return &b }
	return bp
}

func (p *bufPool) get() *[]byte  { return p.p.Get().(*[]byte) }
func (p *bufPool) put(b *[]byte) { p.p.Put(b) }

// putIfSet puts b back unless it is nil (a read that took no buffer).
func (p *bufPool) putIfSet(b *[]byte) {
	if b != nil {
		p.p.Put(b)
	}
}

var (
	// streamBufs carry forwarded TCP data.
	streamBufs = newBufPool(32 << 10)
	// datagramBufs carry forwarded UDP datagrams, which may be up to
	// 65535 bytes on either side.
	datagramBufs = newBufPool(65535)
)

// readFunc waits for data, then reads it into a buffer from its pool. The
// caller writes b[:n] and returns b to the pool; b is nil when there was
// nothing to read (err is then set).
type readFunc func() (b *[]byte, n int, err error)

// readinessMask is what makes a gVisor endpoint worth reading: data, or an
// end (FIN, RST, close, ICMP error) that Read will report.
const readinessMask = waiter.ReadableEvents | waiter.EventErr | waiter.EventHUp

// peerReader returns a readFunc for the gVisor side of a flow, reading
// through conn (a gonet conn on ep). The returned stop must be called
// once reading is over; it unregisters the waiter.
func peerReader(ep tcpip.Endpoint, wq *waiter.Queue, conn net.Conn, pool *bufPool) (read readFunc, stop func()) {
	entry, ch := waiter.NewChannelEntry(readinessMask)
	wq.EventRegister(&entry)
	read = func() (*[]byte, int, error) {
		for ep.Readiness(readinessMask) == 0 {
			<-ch
		}
		b := pool.get()
		n, err := conn.Read(*b)
		return b, n, err
	}
	return read, func() { wq.EventUnregister(&entry) }
}

// hostReader returns a readFunc for a host socket. If the socket exposes
// its descriptor, the read happens inside the runtime poller's callback so
// a buffer is taken only when data is there; otherwise it falls back to a
// blocking read into a pooled buffer. For a stream, a zero-byte read is
// io.EOF; for datagrams it is an empty datagram. Read deadlines apply.
func hostReader(c net.Conn, pool *bufPool, stream bool) readFunc {
	sc, ok := c.(syscall.Conn)
	var rc syscall.RawConn
	if ok {
		var err error
		if rc, err = sc.SyscallConn(); err != nil {
			ok = false
		}
	}
	if !ok {
		return func() (*[]byte, int, error) {
			b := pool.get()
			n, err := c.Read(*b)
			return b, n, err
		}
	}
	return func() (*[]byte, int, error) {
		var (
			b    *[]byte
			n    int
			rerr error
		)
		err := rc.Read(func(fd uintptr) bool {
			b = pool.get()
			for {
				n, rerr = unix.Read(int(fd), *b)
				if rerr != unix.EINTR {
					break
				}
			}
			if rerr == unix.EAGAIN {
				pool.put(b)
				b = nil
				return false // wait until readable, then call again
			}
			return true
		})
		if err == nil {
			err = rerr
		}
		if n < 0 {
			n = 0
		}
		if err == nil && n == 0 && stream {
			err = io.EOF
		}
		if err != nil {
			err = &net.OpError{Op: "read", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
		}
		return b, n, err
	}
}

// copyStream copies from read to dst until the source ends, then calls
// end (the half-close of dst), adding the bytes it wrote to count. It
// returns nil only if the source ended cleanly (EOF) and end worked;
// fromSource says whether an error came from reading the source (else
// from writing to or half-closing dst).
func copyStream(dst net.Conn, read readFunc, pool *bufPool, end func() error, count *atomic.Uint64) (fromSource bool, err error) {
	for {
		b, n, rerr := read()
		if b != nil {
			if n > 0 {
				if _, werr := dst.Write((*b)[:n]); werr != nil {
					pool.put(b)
					return false, werr
				}
				count.Add(uint64(n))
			}
			pool.put(b)
		}
		if errors.Is(rerr, io.EOF) {
			return false, end()
		}
		if rerr != nil {
			return true, rerr
		}
	}
}

// closeWrite half-closes c if it can.
func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
