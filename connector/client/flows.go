package client

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/appconnector/appconnector/connector/flowlog"
)

// How a flow through the client ended, in its flow log line.
const (
	endClosed        = "closed"         // the program closed it
	endReset         = "reset"          // a read or write failed: the far side reset it, or it timed out
	endConnectorDown = "connector_down" // its connector stopped answering: the client reset it
	endDialFailed    = "dial_failed"    // reason: refused, timeout, unreachable, connectors_down, other
)

// defaultFlowRecordInterval is how often a flow still open gets a line.
const defaultFlowRecordInterval = 5 * time.Minute

// flows are the client's open flows, for the flow log's interim lines.
type flows struct {
	mu   sync.Mutex
	open map[*loggedConn]struct{}
}

// logged wraps conn, a flow just opened to dst (via a connector whose
// key is peer, "" for a direct one), for the flow log. Without a flow
// log it returns conn as it is.
func (c *Client) logged(conn net.Conn, network, name, peer, via string) net.Conn {
	if c.cfg.FlowLog == nil {
		return conn
	}
	src, _ := netip.ParseAddrPort(conn.LocalAddr().String())
	dst, _ := netip.ParseAddrPort(conn.RemoteAddr().String())
	lc := &loggedConn{Conn: conn, c: c, rec: flowlog.Record{
		Peer: peer, Via: via, Domain: name, Proto: network[:3], Src: src, Dst: dst, Start: time.Now(),
	}}
	c.flows.mu.Lock()
	c.flows.open[lc] = struct{}{}
	c.flows.mu.Unlock()
	return lc
}

// dialFailed logs a dial that failed, aggregated by the writer.
func (c *Client) dialFailed(network, name string, dst netip.AddrPort, peer, via string, err error) {
	if c.cfg.FlowLog == nil {
		return
	}
	c.cfg.FlowLog.Refused(flowlog.Record{Time: time.Now(), Peer: peer, Via: via, Domain: name, Proto: network[:3],
		Dst: dst, Start: time.Now(), End: endDialFailed, Reason: dialReason(err)})
}

func dialReason(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, errAllDown):
		return "connectors_down"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	}
	return "other"
}

// recordOpenFlows writes a line for each open flow every interval, until
// the client closes.
func (c *Client) recordOpenFlows(interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
			c.flows.mu.Lock()
			open := make([]*loggedConn, 0, len(c.flows.open))
			for lc := range c.flows.open {
				open = append(open, lc)
			}
			c.flows.mu.Unlock()
			for _, lc := range open {
				c.cfg.FlowLog.Write(lc.record("open"))
			}
		}
	}
}

// loggedConn is a flow the flow log accounts for: bytes each way, how it
// ended; its line is written when it is closed.
type loggedConn struct {
	net.Conn
	c        *Client
	rec      flowlog.Record
	up, down atomic.Uint64
	failed   atomic.Bool // a read or write failed (not at the end of the stream)
	once     sync.Once
}

func (lc *loggedConn) Read(b []byte) (int, error) {
	n, err := lc.Conn.Read(b)
	lc.down.Add(uint64(n))
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, os.ErrDeadlineExceeded) {
		lc.failed.Store(true)
	}
	return n, err
}

func (lc *loggedConn) Write(b []byte) (int, error) {
	n, err := lc.Conn.Write(b)
	lc.up.Add(uint64(n))
	if err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, os.ErrDeadlineExceeded) {
		lc.failed.Store(true)
	}
	return n, err
}

// CloseWrite half-closes a TCP flow.
func (lc *loggedConn) CloseWrite() error {
	if cw, ok := lc.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

func (lc *loggedConn) Close() error {
	err := lc.Conn.Close()
	lc.once.Do(func() {
		lc.c.flows.mu.Lock()
		delete(lc.c.flows.open, lc)
		lc.c.flows.mu.Unlock()
		end := endClosed
		switch {
		case isKilled(lc.Conn):
			end = endConnectorDown
		case lc.failed.Load():
			end = endReset
		}
		lc.c.cfg.FlowLog.Write(lc.record(end))
	})
	return err
}

// record is the flow's line as of now.
func (lc *loggedConn) record(end string) flowlog.Record {
	r := lc.rec
	r.Time = time.Now()
	r.Duration = r.Time.Sub(r.Start).Seconds()
	r.BytesUp, r.BytesDown, r.End = lc.up.Load(), lc.down.Load(), end
	return r
}

// isKilled reports whether conn is a flow the client reset because its
// connector went down.
func isKilled(conn net.Conn) bool {
	tc, ok := conn.(*trackedConn)
	return ok && tc.killed.Load()
}
