package netstack

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// How a flow ended, as FlowRecord.End reports it.
const (
	EndClosed     = "closed"        // TCP: both sides ended with a FIN; UDP: closed by the stack
	EndPeerReset  = "reset_by_peer" // the peer reset the connection, or its side failed
	EndHostReset  = "reset_by_host" // the host's side was reset, failed or reported unreachable
	EndIdle       = "idle"          // no traffic for the idle timeout, or the far side stopped answering keepalives
	EndShutdown   = "shutdown"      // the stack closed or stopped the flow
	EndPolicy     = "refused_policy"
	EndLimit      = "refused_limit"
	EndDialFailed = "dial_failed" // Reason says why: DialFailureNames
)

// DefaultFlowRecordInterval is how often a flow still open gets an
// interim record.
const DefaultFlowRecordInterval = 5 * time.Minute

// FlowRecord accounts for one TCP or UDP flow: when it ends, every
// Config.FlowRecordInterval while it goes on (End empty), or when it is
// refused (no bytes, Duration 0).
type FlowRecord struct {
	Flow
	Start    time.Time
	Duration time.Duration
	// BytesUp is payload from the peer to the host, BytesDown back.
	BytesUp, BytesDown uint64
	End                string // EndClosed...; "" for an interim record
	Reason             string // with EndDialFailed: DialFailureNames[...]
}

// record sends r to the Config's FlowRecords, if set.
func (s *Stack) record(r FlowRecord) {
	if s.cfg.FlowRecords != nil {
		s.cfg.FlowRecords(r)
	}
}

// refused records a flow refused as end (reason: why a dial failed).
func (s *Stack) refused(f Flow, end, reason string) {
	if s.cfg.FlowRecords != nil {
		s.cfg.FlowRecords(FlowRecord{Flow: f, Start: time.Now(), End: end, Reason: reason})
	}
}

// flowAccount is what a forwarded TCP or UDP flow keeps for its records.
type flowAccount struct {
	f        Flow
	start    time.Time
	up, down atomic.Uint64
	endMu    sync.Mutex
	end      string
	ended    bool
}

// setEnd notes how the flow ends; the first call wins, so the failure
// that started a teardown names it, not the errors the teardown causes.
func (a *flowAccount) setEnd(end string) {
	a.endMu.Lock()
	if a.end == "" {
		a.end = end
	}
	a.endMu.Unlock()
}

// final returns the flow's last record, once: later calls report false.
func (a *flowAccount) final(orEnd string) (FlowRecord, bool) {
	a.endMu.Lock()
	defer a.endMu.Unlock()
	if a.ended {
		return FlowRecord{}, false
	}
	a.ended = true
	if a.end == "" {
		a.end = orEnd
	}
	return FlowRecord{Flow: a.f, Start: a.start, Duration: time.Since(a.start),
		BytesUp: a.up.Load(), BytesDown: a.down.Load(), End: a.end}, true
}

// interim returns a record of the flow so far, unless it has ended.
func (a *flowAccount) interim(now time.Time) (FlowRecord, bool) {
	a.endMu.Lock()
	defer a.endMu.Unlock()
	if a.ended {
		return FlowRecord{}, false
	}
	return FlowRecord{Flow: a.f, Start: a.start, Duration: now.Sub(a.start),
		BytesUp: a.up.Load(), BytesDown: a.down.Load()}, true
}

// recordInterims sends an interim record of every open TCP and UDP flow
// each FlowRecordInterval, until the stack closes.
func (s *Stack) recordInterims() {
	t := time.NewTicker(s.cfg.FlowRecordInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case now := <-t.C:
			s.mu.Lock()
			var open []*flowAccount
			for fc := range s.flows {
				if fc.acct != nil {
					open = append(open, fc.acct)
				}
			}
			s.mu.Unlock()
			for _, a := range open {
				if r, ok := a.interim(now); ok {
					s.record(r)
				}
			}
		}
	}
}

// peerTimeoutText is gVisor's keepalive or retransmission timeout as
// gonet reports it: gonet keeps only the error's text.
var peerTimeoutText = (&tcpip.ErrTimeout{}).String()

// peerEnd is how a flow ends after err on its peer side.
func peerEnd(err error) string {
	if errors.Is(err, os.ErrDeadlineExceeded) || containsText(err, peerTimeoutText) {
		return EndIdle
	}
	return EndPeerReset
}

// hostEnd is how a flow ends after err on its host side.
func hostEnd(err error) string {
	if errors.Is(err, syscall.ETIMEDOUT) {
		return EndIdle
	}
	return EndHostReset
}

func containsText(err error, text string) bool {
	for e := err; e != nil; e = errors.Unwrap(e) {
		if e.Error() == text {
			return true
		}
	}
	return false
}
