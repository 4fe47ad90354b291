package connector

import (
	"context"
	"time"

	"github.com/miekg/dns"
)

// Prefetching: the exact domains of apps with "prefetch" are resolved by
// the connector itself, at start and again before the routes they gave
// would expire, so that peers that never ask (stock WireGuard clients with
// the routes as AllowedIPs) find them in place.

const (
	// prefetchMinInterval is the least time between two rounds of
	// questions (A and AAAA) for one name.
	prefetchMinInterval = 10 * time.Second
	// prefetchMaxBackoff is the longest wait after failed rounds.
	prefetchMaxBackoff = 5 * time.Minute
	// prefetchCheckEvery is how often the due names are looked at.
	prefetchCheckEvery = 500 * time.Millisecond
)

// prefetchState is when a name is asked next, and its failures in a row.
type prefetchState struct {
	next  time.Time
	fails int
}

// prefetch resolves the prefetched names when they are due, until the
// connector closes.
func (c *Connector) prefetch() {
	defer c.bg.Done()
	state := map[string]*prefetchState{}
	t := time.NewTicker(prefetchCheckEvery)
	defer t.Stop()
	for {
		names := c.table.prefetchNames()
		now := c.table.cfg.now()
		seen := make(map[string]bool, len(names))
		for _, name := range names {
			seen[name] = true
			st := state[name]
			if st == nil {
				st = &prefetchState{}
				state[name] = st
			}
			if now.Before(st.next) || c.draining.Load() {
				continue
			}
			life, err := c.prefetchName(name)
			if c.ctx.Err() != nil {
				return
			}
			if err != nil {
				st.fails++
				st.next = now.Add(min(prefetchMinInterval<<min(st.fails-1, 5), prefetchMaxBackoff))
				c.dns.logf("dns: prefetch %s: %v; again in %v", name, err, st.next.Sub(now))
				continue
			}
			// Again a tenth of the routes' life (at most a minute)
			// before they would expire.
			st.fails = 0
			st.next = now.Add(max(life-min(life/10, time.Minute), prefetchMinInterval))
		}
		for name := range state {
			if !seen[name] {
				delete(state, name) // the policy dropped it
			}
		}
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// prefetchName asks for name's A and AAAA records and learns the answers
// for the apps name belongs to. It returns the shortest life the answers
// gave a route: when to ask again.
func (c *Connector) prefetchName(name string) (time.Duration, error) {
	life := c.table.cfg.ttl
	answered := false
	var lastErr error
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		ctx, cancel := context.WithTimeout(c.ctx, c.dns.timeout)
		q := dns.Question{Name: dns.Fqdn(name), Qtype: qtype, Qclass: dns.ClassINET}
		up, err := c.dns.exchange(ctx, q, new(dns.Msg))
		cancel()
		if err != nil {
			lastErr = err
			continue
		}
		answered = true
		if up.Rcode != dns.RcodeSuccess {
			continue
		}
		addrs, err := chainAddrs(q.Name, qtype, up.Answer)
		if err != nil {
			c.table.countChainRefused()
			lastErr = err
			continue
		}
		owner := q.Name
		for _, n := range chainNames(q.Name, qtype, up.Answer)[1:] {
			if known, _ := c.table.lookupName(n, selfPeer); known && !c.table.sameApps(n, owner) {
				owner = n
			}
		}
		if refused := c.table.learn(selfPeer, owner, addrs); len(refused) > 0 {
			c.dns.logf("dns: prefetch %s: not learned: %v", name, refused)
		}
		for _, a := range addrs {
			life = min(life, c.table.lifetime(a.ttl))
		}
	}
	if !answered {
		return 0, lastErr
	}
	return life, nil
}
