package connector

import (
	"container/heap"
	"net/netip"
	"time"
)

// Learned routes' lifetimes: each claim expires clamp(TTL, ttlMin, ttl)
// after the last answer that named its address, but not while a flow to
// the address is open, nor within the grace period after the last one
// ended. Claims wait in a heap ordered by when they are due, so a sweep
// costs only what expires.

// lifetime is how long an answer with TTL ttl keeps a route.
func (t *routeTable) lifetime(ttl uint32) time.Duration {
	if t.cfg.ttlMin <= 0 {
		return t.cfg.ttl
	}
	return min(max(time.Duration(ttl)*time.Second, t.cfg.ttlMin), t.cfg.ttl)
}

// expire drops the learned claims whose answers' lifetime has passed,
// unless a flow to the address is open or ended less than the grace period
// ago; those are looked at again later.
func (t *routeTable) expire() {
	now := t.cfg.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for len(t.due) > 0 && !t.due[0].due.After(now) {
		c := t.due[0]
		if t.cfg.inUse(c.route.addr) {
			// Looked at again later; when the flow ends, its grace
			// period starts.
			c.due = now.Add(max(t.cfg.grace, inUseRecheck))
			heap.Fix(&t.due, 0)
			continue
		}
		if next := t.keepUntilLocked(c, now); next.After(now) {
			c.due = next
			heap.Fix(&t.due, 0)
			continue
		}
		t.dropClaimLocked(c)
		t.stats.Expired++
		n++
	}
	if n > 0 {
		t.bumpLocked()
	}
}

// inUseRecheck is the least time before expire looks again at a claim it
// kept for an open flow.
const inUseRecheck = 10 * time.Second

// keepUntilLocked is the earliest c may expire, seen at now: its
// answers' expiry, or the grace period after its address's last flow, or
// (with a flow open) a grace period from now, when it is looked at again.
func (t *routeTable) keepUntilLocked(c *claim, now time.Time) time.Time {
	until := c.expires
	if t.cfg.inUse(c.route.addr) {
		return maxTime(until, now.Add(t.cfg.grace))
	}
	if end := c.route.lastFlowEnd.Load(); end != 0 {
		until = maxTime(until, time.Unix(0, end).Add(t.cfg.grace))
	}
	return until
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// flowEnded records that the last open flow to addr is ending, starting
// its grace period.
func (t *routeTable) flowEnded(addr netip.Addr) {
	now := t.cfg.now().UnixNano()
	t.mu.RLock()
	defer t.mu.RUnlock()
	if r := t.learned[addr]; r != nil {
		r.lastFlowEnd.Store(now)
	}
}

// claimHeap orders claims by when they are due, for expire.
type claimHeap []*claim

func (h claimHeap) Len() int           { return len(h) }
func (h claimHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h claimHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx, h[j].heapIdx = i, j
}
func (h *claimHeap) Push(x any) {
	c := x.(*claim)
	c.heapIdx = len(*h)
	*h = append(*h, c)
}
func (h *claimHeap) Pop() any {
	old := *h
	c := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	c.heapIdx = -1
	return c
}
