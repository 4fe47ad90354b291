// Package flowlog writes flow logs: one JSON object per line for each flow
// that ended, for each flow still open every few minutes, and for flows
// refused, aggregated per peer, destination and reason over each second
// so that a flood writes a bounded number of lines.
//
// Writing never blocks the caller: records go through a bounded queue to
// a goroutine that writes the file, and a record that finds the queue
// full is dropped and counted. The file is created with mode 0600. Reopen
// closes and reopens it by name (logrotate's convention, on SIGHUP); with
// Config.MaxSize the writer also rotates it itself, keeping
// Config.MaxBackups older files as NAME.1 (newest) to NAME.N.
package flowlog

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/appconnector/appconnector/connector/logger"
)

// Record is one line of the flow log.
type Record struct {
	Time time.Time `json:"time"`           // when the line was written: the flow's end, or now for an open flow
	Peer string    `json:"peer,omitempty"` // the WireGuard public key of the flow's peer
	Tags []string  `json:"tags,omitempty"` // the peer's tags
	App  string    `json:"app,omitempty"`  // the app whose route the destination is
	// Domain is the name the route to the destination was learned from;
	// empty for a configured route.
	Domain string `json:"domain,omitempty"`
	// Via is, on a client's lines, the way the flow went: connector,
	// exit (an exit peer) or direct.
	Via   string         `json:"via,omitempty"`
	Proto string         `json:"proto"` // tcp, udp
	Src   netip.AddrPort `json:"src"`   // the flow's inner source (the peer's tunnel address); port 0 on an aggregated line
	Dst   netip.AddrPort `json:"dst"`
	// Start is when the flow was opened (for refused flows, the first
	// refusal in the line's second).
	Start     time.Time `json:"start"`
	Duration  float64   `json:"duration_s"`
	BytesUp   uint64    `json:"bytes_up"`   // from the peer toward the destination
	BytesDown uint64    `json:"bytes_down"` // back
	// End is how the flow ended (closed, reset_by_peer, reset_by_host,
	// idle, shutdown, refused_policy, refused_limit, dial_failed), or
	// "open" for a flow that goes on.
	End    string `json:"end"`
	Reason string `json:"reason,omitempty"` // with dial_failed: refused, timeout, unreachable, other
	// Count is how many refused flows the line stands for (refusals
	// only).
	Count uint64 `json:"count,omitempty"`
}

// Config configures a Writer.
type Config struct {
	// Path is the file to write. Required unless Out is set.
	Path string
	// Out, for tests, replaces the file: lines are written to it, and
	// Reopen and rotation do nothing.
	Out io.Writer
	// MaxSize, if positive, rotates the file when a write would take it
	// past this many bytes; MaxBackups older files are kept (zero: 3).
	MaxSize    int64
	MaxBackups int
	// Queue is how many records may wait to be written; beyond it they
	// are dropped. Zero means DefaultQueue.
	Queue int
	// MaxRefusalKeys bounds the peer/destination/reason combinations of
	// refused flows kept in one second; beyond it refusals count in one
	// line per peer with no destination. Zero means DefaultMaxRefusalKeys.
	MaxRefusalKeys int
	// Logf reports write errors (rate-limited by the caller's logger).
	Logf logger.Logf
}

// Defaults for the zero values of Config.
const (
	DefaultQueue          = 8192
	DefaultMaxRefusalKeys = 1024
	defaultMaxBackups     = 3
)

// Stats count a Writer's lines.
type Stats struct {
	Written uint64 // lines written
	Dropped uint64 // records dropped: the queue was full (a slow or stalled disk)
	Errors  uint64 // failed writes and reopenings
}

// Writer writes a flow log. Its methods are safe for concurrent use.
type Writer struct {
	cfg    Config
	queue  chan Record
	reopen chan struct{}
	quit   chan struct{}
	done   chan struct{}

	written, dropped, errs atomic.Uint64

	fileMu sync.Mutex // guards file against Close while the writer is blocked
	file   *os.File
	size   int64

	refMu   sync.Mutex
	refused map[refusalKey]*Record
	closed  atomic.Bool
	once    sync.Once
}

type refusalKey struct {
	peer, proto, end, reason string
	dst                      netip.AddrPort
}

// Open opens (creating it 0600 if need be) the flow log and starts its
// writer.
func Open(cfg Config) (*Writer, error) {
	if cfg.Path == "" && cfg.Out == nil {
		return nil, errors.New("flowlog: no path")
	}
	if cfg.Queue <= 0 {
		cfg.Queue = DefaultQueue
	}
	if cfg.MaxRefusalKeys <= 0 {
		cfg.MaxRefusalKeys = DefaultMaxRefusalKeys
	}
	if cfg.MaxBackups <= 0 {
		cfg.MaxBackups = defaultMaxBackups
	}
	if cfg.Logf == nil {
		cfg.Logf = logger.Discard
	}
	w := &Writer{cfg: cfg, queue: make(chan Record, cfg.Queue), reopen: make(chan struct{}, 1),
		quit: make(chan struct{}), done: make(chan struct{}), refused: map[refusalKey]*Record{}}
	if cfg.Out == nil {
		if err := w.openFile(); err != nil {
			return nil, err
		}
	}
	go w.run()
	return w, nil
}

// openFile opens cfg.Path for appending, creating it with mode 0600.
func (w *Writer) openFile() error {
	f, err := os.OpenFile(w.cfg.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("flow log: %w", err)
	}
	var size int64
	if fi, err := f.Stat(); err == nil {
		size = fi.Size()
	}
	w.fileMu.Lock()
	w.file, w.size = f, size
	w.fileMu.Unlock()
	return nil
}

// Write queues r; if the queue is full it drops r and counts it. It never
// blocks.
func (w *Writer) Write(r Record) {
	if w.closed.Load() {
		return
	}
	select {
	case w.queue <- r:
	default:
		w.dropped.Add(1)
	}
}

// Refused counts a refused flow toward its line for this second: one line
// per peer, protocol, destination, end and reason, with Count.
func (w *Writer) Refused(r Record) {
	if w.closed.Load() {
		return
	}
	// One line stands for flows from many source ports: it names none.
	r.Src = netip.AddrPortFrom(r.Src.Addr(), 0)
	k := refusalKey{peer: r.Peer, proto: r.Proto, dst: r.Dst, end: r.End, reason: r.Reason}
	w.refMu.Lock()
	defer w.refMu.Unlock()
	if agg, ok := w.refused[k]; ok {
		agg.Count++
		return
	}
	if len(w.refused) >= w.cfg.MaxRefusalKeys {
		// Too many destinations this second: one line per peer for the
		// rest, with no destination.
		k.dst, k.reason = netip.AddrPort{}, ""
		r.Dst, r.Reason = netip.AddrPort{}, ""
		if agg, ok := w.refused[k]; ok {
			agg.Count++
			return
		}
	}
	r.Count = 1
	w.refused[k] = &r
}

// Reopen makes the writer close the file and open Path again (after
// logrotate moved it aside, say). It does not wait.
func (w *Writer) Reopen() {
	select {
	case w.reopen <- struct{}{}:
	default:
	}
}

// Stats returns the writer's counters.
func (w *Writer) Stats() Stats {
	return Stats{Written: w.written.Load(), Dropped: w.dropped.Load(), Errors: w.errs.Load()}
}

// Close writes what is queued and the refusals counted so far, and closes
// the file. If the file does not take them within a few seconds (a
// stalled disk), it gives up on them and closes it anyway.
func (w *Writer) Close() error {
	w.once.Do(func() {
		w.closed.Store(true)
		close(w.quit)
		select {
		case <-w.done:
		case <-time.After(3 * time.Second):
			w.fileMu.Lock()
			if w.file != nil {
				w.file.Close() // unblocks a write stuck on it
			}
			w.fileMu.Unlock()
			if c, ok := w.cfg.Out.(io.Closer); ok {
				c.Close()
			}
			<-w.done
		}
	})
	w.fileMu.Lock()
	defer w.fileMu.Unlock()
	if w.file != nil {
		err := w.file.Close()
		w.file = nil
		if err != nil && !errors.Is(err, os.ErrClosed) {
			return err
		}
	}
	return nil
}

// run writes queued records until Close, flushing whenever the queue is
// empty, and the refusal lines every second.
func (w *Writer) run() {
	defer close(w.done)
	bw := bufio.NewWriterSize(writerFunc(w.writeOut), 64<<10)
	enc := json.NewEncoder(bw)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	write := func(r Record) {
		if err := enc.Encode(r); err != nil {
			w.fail("write", err)
			return
		}
		w.written.Add(1)
	}
	flush := func() {
		if err := bw.Flush(); err != nil {
			w.fail("write", err)
			bw.Reset(writerFunc(w.writeOut))
		}
	}
	for {
		select {
		case r := <-w.queue:
			write(r)
			if len(w.queue) == 0 {
				flush()
			}
		case <-tick.C:
			for _, r := range w.takeRefused() {
				write(r)
			}
			flush()
		case <-w.reopen:
			flush()
			w.reopenFile()
		case <-w.quit:
			for {
				select {
				case r := <-w.queue:
					write(r)
					continue
				default:
				}
				break
			}
			for _, r := range w.takeRefused() {
				write(r)
			}
			flush()
			return
		}
	}
}

// takeRefused returns this second's refusal lines and starts the next.
func (w *Writer) takeRefused() []Record {
	w.refMu.Lock()
	defer w.refMu.Unlock()
	if len(w.refused) == 0 {
		return nil
	}
	now := time.Now()
	out := make([]Record, 0, len(w.refused))
	for _, r := range w.refused {
		r.Time = now
		out = append(out, *r)
	}
	clear(w.refused)
	return out
}

// writeOut writes p, whole lines, to the file or to Out. With MaxSize it
// writes the lines that fit, rotates, and goes on with the rest: a file
// passes MaxSize only by holding a single line longer than it.
func (w *Writer) writeOut(p []byte) (int, error) {
	if w.cfg.Out != nil {
		return w.cfg.Out.Write(p)
	}
	written := 0
	for w.cfg.MaxSize > 0 && w.size+int64(len(p)) > w.cfg.MaxSize {
		room := max(w.cfg.MaxSize-w.size, 0)
		cut := bytes.LastIndexByte(p[:min(int64(len(p)), room)], '\n') + 1
		if cut == 0 && w.size == 0 {
			// One line longer than MaxSize: it gets a file of its own.
			cut = bytes.IndexByte(p, '\n') + 1
			if cut == 0 {
				cut = len(p)
			}
		}
		if cut > 0 {
			n, err := w.writeFile(p[:cut])
			written += n
			if err != nil {
				return written, err
			}
			p = p[cut:]
		}
		if len(p) == 0 {
			return written, nil
		}
		if err := w.rotate(); err != nil {
			w.fail("rotate", err)
			break
		}
	}
	n, err := w.writeFile(p)
	return written + n, err
}

// writeFile writes p to the open file.
func (w *Writer) writeFile(p []byte) (int, error) {
	w.fileMu.Lock()
	f := w.file
	w.fileMu.Unlock()
	if f == nil {
		return 0, errors.New("flow log is closed")
	}
	n, err := f.Write(p)
	w.size += int64(n)
	return n, err
}

// rotate moves NAME.i to NAME.i+1 (dropping the oldest), NAME to NAME.1,
// and opens a new NAME.
func (w *Writer) rotate() error {
	w.fileMu.Lock()
	if w.file != nil {
		w.file.Close()
		w.file = nil
	}
	w.fileMu.Unlock()
	p := w.cfg.Path
	os.Remove(fmt.Sprintf("%s.%d", p, w.cfg.MaxBackups))
	for i := w.cfg.MaxBackups - 1; i >= 1; i-- {
		os.Rename(fmt.Sprintf("%s.%d", p, i), fmt.Sprintf("%s.%d", p, i+1))
	}
	if err := os.Rename(p, p+".1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		w.openFile()
		return err
	}
	return w.openFile()
}

func (w *Writer) reopenFile() {
	if w.cfg.Out != nil {
		return
	}
	w.fileMu.Lock()
	if w.file != nil {
		w.file.Close()
		w.file = nil
	}
	w.fileMu.Unlock()
	if err := w.openFile(); err != nil {
		w.fail("reopen", err)
	}
}

func (w *Writer) fail(what string, err error) {
	w.errs.Add(1)
	w.cfg.Logf("flow log: %s: %v", what, err)
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
