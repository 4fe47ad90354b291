package connector

import (
	"container/list"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Serving stale answers (RFC 8767): the last answer to each question for
// an app name is kept, packed, and given out again, with a short TTL,
// when every upstream fails for it, so that a resolver outage does not
// take apps down with it. Its addresses are learned again as if they had
// just been answered.

const (
	// staleTTL is the TTL of the records of a stale answer (RFC 8767
	// section 4 recommends 30 s).
	staleTTL = 30
	// staleMaxAge is how long an answer may be served stale after it was
	// received (RFC 8767 suggests one to three days).
	staleMaxAge = 24 * time.Hour
)

// staleKey is a question as the cache files it.
type staleKey struct {
	name  string // canonical
	qtype uint16
	do    bool // the DNSSEC OK bit: such answers carry signatures
}

type staleEntry struct {
	key    staleKey
	packed []byte
	at     time.Time
}

// staleCache holds the last answers, at most max of them, least recently
// stored dropped first.
type staleCache struct {
	max int

	mu      sync.Mutex
	entries map[staleKey]*list.Element
	order   list.List // of *staleEntry, least recently stored first
}

// put keeps m as the last answer to k, received at now.
func (c *staleCache) put(k staleKey, m *dns.Msg, now time.Time) {
	packed, err := m.Pack()
	if err != nil || c.max <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		c.entries = map[staleKey]*list.Element{}
	}
	if e, ok := c.entries[k]; ok {
		se := e.Value.(*staleEntry)
		se.packed, se.at = packed, now
		c.order.MoveToBack(e)
		return
	}
	for c.order.Len() >= c.max {
		old := c.order.Front()
		delete(c.entries, old.Value.(*staleEntry).key)
		c.order.Remove(old)
	}
	c.entries[k] = c.order.PushBack(&staleEntry{key: k, packed: packed, at: now})
}

// get returns the last answer to k with every TTL set to staleTTL, and
// how old it is; nil if there is none younger than staleMaxAge.
func (c *staleCache) get(k staleKey, now time.Time) (*dns.Msg, time.Duration) {
	c.mu.Lock()
	e, ok := c.entries[k]
	var packed []byte
	var at time.Time
	if ok {
		se := e.Value.(*staleEntry)
		packed, at = se.packed, se.at
	}
	c.mu.Unlock()
	if !ok || now.Sub(at) > staleMaxAge {
		return nil, 0
	}
	m := new(dns.Msg)
	if err := m.Unpack(packed); err != nil {
		return nil, 0
	}
	for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			if h := rr.Header(); h.Rrtype != dns.TypeOPT {
				h.Ttl = staleTTL
			}
		}
	}
	return m, now.Sub(at)
}

// len is the number of answers kept.
func (c *staleCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}
