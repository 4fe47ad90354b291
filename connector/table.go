package connector

import (
	"container/heap"
	"container/list"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go4.org/netipx"

	"github.com/appconnector/appconnector/connector/apptype"
)

// Defaults for the route table.
const (
	// A learned route lives clamp(TTL, DefaultRouteTTLMin,
	// DefaultRouteTTLMax) after the last answer that named it (TTL: the
	// answer record's), and at least DefaultRouteGrace after its last
	// flow ended.
	DefaultRouteTTLMax      = 7 * 24 * time.Hour
	DefaultRouteTTLMin      = 10 * time.Minute
	DefaultRouteGrace       = 2 * time.Minute
	DefaultMaxRoutes        = 100_000
	DefaultMaxRoutesPerApp  = 10_000
	defaultMaxRoutesCeiling = 10_000_000
)

// peerID identifies the peer a flow or query comes from: its public key
// (base64) and the tags its [Peer] section carries.
type peerID struct {
	key  string
	tags []string
	// self is the connector itself asking (prefetching): it may use
	// every app, and holds no claims of its own.
	self bool
}

// selfPeer is the connector asking on its own behalf.
var selfPeer = peerID{self: true}

// servedApp is an app this connector serves, with what the table derives
// from it.
type servedApp struct {
	apptype.App
	idx int // position in the table's apps, as the matcher reports it
	// forward is where its configured routes may be forwarded to (the
	// routes less the guarded and never ranges).
	forward *netipx.IPSet
	// covers is the plain union of its configured routes, for coalescing.
	covers *netipx.IPSet
	// claims are its learned routes, least recently seen first.
	claims list.List // of *claim
}

func (a *servedApp) usableBy(p peerID) bool { return p.self || a.PeerAllowed(p.key, p.tags) }

// claim is one app's hold on a learned address.
type claim struct {
	app         *servedApp
	route       *learnedRoute
	domain      string
	first, last time.Time
	approved    bool
	// expires is when the answers that named the address stop vouching
	// for it; due is when expire looks at the claim next (expires, or
	// later while a flow holds the address), its key in the table's
	// heap at position heapIdx.
	expires, due time.Time
	heapIdx      int
	inApp, inAll *list.Element
	// peer is the key of the peer whose question last named the address
	// ("" for a claim restored from the state file); inPeer is the claim
	// in that peer's list.
	peer   string
	inPeer *list.Element
}

// learnedRoute is a learned address and the apps holding it. It lives as
// long as one claim does.
type learnedRoute struct {
	addr   netip.Addr
	claims []*claim
	// lastFlow is when a flow to addr last started, lastFlowEnd when
	// the last open one ended (UnixNano of the table's clock), 0 if none
	// did.
	lastFlow, lastFlowEnd atomic.Int64
}

// tableConfig is the part of Config the table uses.
type tableConfig struct {
	// ttl and ttlMin bound the lifetime an answer's TTL gives a route
	// (ttlMin <= 0: every answer gives ttl); grace is how long a route
	// outlives its last flow.
	ttl, ttlMin, grace    time.Duration
	maxLearned, maxPerApp int
	maxPerPeer            int // learned routes a peer's questions may hold
	hostAddrs             []netip.Addr
	own                   map[netip.Addr]bool // tunnel and host addresses: never learned
	ownNets               []netip.Prefix      // the tunnel networks: other peers\' addresses, never learned
	now                   func() time.Time
	inUse                 func(netip.Addr) bool // an open flow goes to this address
	// isLocal reports whether an address is the host's own now
	// (hostHasAddr); nil: only hostAddrs count.
	isLocal func(netip.Addr) bool
}

// tableStats are the table's counters.
type tableStats struct {
	UnsafeRefused uint64 // answers not learned because they were unsafe
	Evicted       uint64 // learned routes evicted at a cap
	CapRefused    uint64 // answers not learned: at the cap, every route in use
	Expired       uint64 // learned routes expired
	ChainRefused  uint64 // answers whose CNAME chain was a loop, too long or ambiguous
	LocalRefused  uint64 // flows refused: to an address the host has now, named by no route
}

// routeTable holds the configured and learned routes, decides what may be
// forwarded, and versions what is advertised. All methods are safe for
// concurrent use; none does I/O beyond asking cfg.isLocal.
type routeTable struct {
	cfg tableConfig

	localRefused atomic.Uint64

	mu      sync.RWMutex // guards the fields after it
	apps    []*servedApp
	byName  map[string]*servedApp
	match   *apptype.Matcher
	learned map[netip.Addr]*learnedRoute
	all     list.List             // every claim, least recently seen first
	due     claimHeap             // every claim, soonest due first
	byPeer  map[string]*list.List // each peer's claims, least recently seen first
	version uint64
	changed chan struct{} // closed and replaced when version changes
	dirty   bool          // learned routes changed since the last snapshot
	stats   tableStats
	// advCache holds advertisements computed at cacheVersion, by the set
	// of apps they cover: with many routes, building one costs tens of
	// milliseconds, and every watching peer asks after each change.
	advCache     map[string]advertisement
	cacheVersion uint64
}

func newRouteTable(cfg tableConfig) *routeTable {
	if cfg.now == nil {
		cfg.now = time.Now
	}
	if cfg.inUse == nil {
		cfg.inUse = func(netip.Addr) bool { return false }
	}
	if cfg.isLocal == nil {
		cfg.isLocal = func(netip.Addr) bool { return false }
	}
	if cfg.maxPerPeer <= 0 {
		cfg.maxPerPeer = cfg.maxLearned // a lone peer may fill the table
	}
	t := &routeTable{
		cfg:     cfg,
		byPeer:  map[string]*list.List{},
		byName:  map[string]*servedApp{},
		match:   apptype.NewMatcher(nil),
		learned: map[netip.Addr]*learnedRoute{},
		changed: make(chan struct{}),
	}
	return t
}

// setApps replaces the served apps. Learned routes of apps that are gone,
// or learned from names the app no longer matches, are withdrawn (an
// address another app still holds stays). An app switched to automatic
// approval has its pending routes approved.
func (t *routeTable) setApps(apps []apptype.App) {
	served := make([]*servedApp, len(apps))
	byName := make(map[string]*servedApp, len(apps))
	for i, a := range apps {
		var covers netipx.IPSetBuilder
		for _, r := range a.Routes {
			covers.AddPrefix(r)
		}
		cs, _ := covers.IPSet()
		served[i] = &servedApp{App: a, idx: i, forward: forwardSet(a.Routes, t.cfg.hostAddrs), covers: cs}
		byName[a.Name] = served[i]
	}
	m := apptype.NewMatcher(apps)

	t.mu.Lock()
	defer t.mu.Unlock()
	// Move each surviving claim to its app's new servedApp.
	for e := t.all.Front(); e != nil; {
		next := e.Next()
		c := e.Value.(*claim)
		na := byName[c.app.Name]
		switch {
		case na == nil, !slices.Contains(m.Match(c.domain), na.idx), t.refusalLocked(na, c.route.addr) != "":
			// The app, the name or the permission to learn this
			// address (allowPrivate) is gone.
			t.dropClaimLocked(c)
		default:
			c.app.claims.Remove(c.inApp)
			c.app = na
			c.inApp = na.claims.PushBack(c)
			if na.Approval != apptype.ApprovalManual && !c.approved {
				c.approved = true
				t.dirty = true
			}
		}
		e = next
	}
	t.apps, t.byName, t.match = served, byName, m
	t.bumpLocked()
}

// lookupName reports whether name belongs to any app (known), and
// whether peer p may resolve it through the connector (ok): only if every
// app it belongs to is one p may use. A name of a restricted app stays
// refused to other peers even when a broader app (a wildcard) covers it
// too.
func (t *routeTable) lookupName(name string, p peerID) (known, ok bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	idx := t.match.Match(name)
	for _, i := range idx {
		if !t.apps[i].usableBy(p) {
			return true, false
		}
	}
	return len(idx) > 0, len(idx) > 0
}

// prefetchNames returns the exact domains of the apps that prefetch,
// sorted.
func (t *routeTable) prefetchNames() []string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	var out []string
	for _, a := range t.apps {
		if !a.Prefetch {
			continue
		}
		for _, d := range a.Domains {
			if !strings.HasPrefix(d, "*.") {
				out = append(out, d)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// sameApps reports whether names a and b belong to the same apps.
func (t *routeTable) sameApps(a, b string) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return slices.Equal(t.match.Match(a), t.match.Match(b))
}

// learn records addrs, the answer for name asked by peer p, as routes of
// the apps name belongs to now (the policy may have changed while the
// answer was in flight), each living for the lifetime its TTL gives. It
// returns once the routes are in the table: a flow that starts after
// learn returns is forwarded. Unsafe addresses are refused, counted and
// returned with the reason, as are addresses the caps left no room for.
func (t *routeTable) learn(p peerID, name string, addrs []answerAddr) (refused []notLearned) {
	name = apptype.CanonicalName(name)
	// The host's addresses as they are now (the kernel's answer, outside
	// the lock): one added after start is never learned either, like
	// those known at start. (Loopback is judged by the unsafe ranges and
	// the app's allowPrivate, as before.)
	local := make([]bool, len(addrs))
	for i, a := range addrs {
		local[i] = !a.addr.IsLoopback() && t.cfg.isLocal(a.addr)
	}
	now := t.cfg.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	var apps []*servedApp
	for _, i := range t.match.Match(name) {
		if !t.apps[i].usableBy(p) {
			return nil
		}
		apps = append(apps, t.apps[i])
	}
	changed := false
	for _, a := range apps {
		for i, aa := range addrs {
			addr := aa.addr
			why := t.refusalLocked(a, addr)
			if local[i] {
				why = "an address of the connector's host"
			}
			if why != "" {
				t.stats.UnsafeRefused++
			} else {
				switch t.claimLocked(a, addr, name, now, now.Add(t.lifetime(aa.ttl)), p.key) {
				case claimNew:
					changed = true
				case claimFull:
					why = "the route table is full of routes in use"
				}
			}
			if why != "" && !slices.ContainsFunc(refused, func(n notLearned) bool { return n.addr == addr }) {
				refused = append(refused, notLearned{addr, why})
			}
		}
	}
	if len(apps) > 0 {
		t.dirty = true // last-seen times moved even when nothing else did
	}
	if changed {
		t.bumpLocked()
	}
	return refused
}

// notLearned is an address of an answer that was not learned, and why.
type notLearned struct {
	addr netip.Addr
	why  string
}

func (n notLearned) String() string { return n.addr.String() + " (" + n.why + ")" }

// What claimLocked did.
const (
	claimRefreshed = iota // the claim existed
	claimNew
	claimFull // no room at a cap: every candidate for eviction is in use
)

// unlearned counts the addresses of addrs the table has not learned.
func (t *routeTable) unlearned(addrs []answerAddr) int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	n := 0
	for _, a := range addrs {
		if t.learned[a.addr] == nil {
			n++
		}
	}
	return n
}

// refusalLocked says why app a may not learn addr, or "".
func (t *routeTable) refusalLocked(a *servedApp, addr netip.Addr) string {
	for _, n := range t.cfg.ownNets {
		if n.Contains(addr) {
			return "inside the tunnel network"
		}
	}
	return refusal(addr, a.AllowPrivate, t.cfg.own)
}

// claimLocked adds or refreshes app a's claim on addr, as taught by the
// question of peer (its key; "" for none) with an answer vouching for it
// until expires, and reports what it did (claimNew, ...). A refresh
// never shortens a claim: a cache's later answer carries a smaller TTL.
//
// At a cap a claim makes room by evicting one without an open flow: at
// the peer's own cap, its own least recently seen; at the app's or the
// table's, the peer's own first, then one no flow used lately, then any.
// So a peer asking for many names under a wildcard app churns its own
// routes, not the ones other peers use.
func (t *routeTable) claimLocked(a *servedApp, addr netip.Addr, name string, now, expires time.Time, peer string) int {
	r := t.learned[addr]
	if r != nil {
		for _, c := range r.claims {
			if c.app == a {
				c.last, c.domain = now, name
				if expires.After(c.expires) {
					c.expires = expires
					if expires.After(c.due) {
						c.due = expires
						heap.Fix(&t.due, c.heapIdx)
					}
				}
				a.claims.MoveToBack(c.inApp)
				t.all.MoveToBack(c.inAll)
				t.setPeerLocked(c, peer)
				return claimRefreshed
			}
		}
	}
	if l := t.byPeer[peer]; peer != "" && l != nil && l.Len() >= t.cfg.maxPerPeer && !t.evictOwnLocked(peer, nil) {
		t.stats.CapRefused++
		return claimFull
	}
	if a.claims.Len() >= t.cfg.maxPerApp && !t.evictOwnLocked(peer, a) && !t.evictLocked(&a.claims, peer) {
		t.stats.CapRefused++
		return claimFull
	}
	if t.all.Len() >= t.cfg.maxLearned && !t.evictOwnLocked(peer, nil) && !t.evictLocked(&t.all, peer) {
		t.stats.CapRefused++
		return claimFull
	}
	// Eviction may have dropped the route found above.
	r = t.learned[addr]
	if r == nil {
		r = &learnedRoute{addr: addr}
		t.learned[addr] = r
	}
	c := &claim{app: a, route: r, domain: name, first: now, last: now, expires: expires, due: expires, approved: a.Approval != apptype.ApprovalManual}
	heap.Push(&t.due, c)
	c.inApp = a.claims.PushBack(c)
	c.inAll = t.all.PushBack(c)
	t.setPeerLocked(c, peer)
	r.claims = append(r.claims, c)
	return claimNew
}

// setPeerLocked makes peer the one that last taught claim c.
func (t *routeTable) setPeerLocked(c *claim, peer string) {
	if c.inPeer != nil && c.peer == peer {
		t.byPeer[peer].MoveToBack(c.inPeer)
		return
	}
	t.unsetPeerLocked(c)
	if peer == "" {
		return
	}
	l := t.byPeer[peer]
	if l == nil {
		l = list.New()
		t.byPeer[peer] = l
	}
	c.peer, c.inPeer = peer, l.PushBack(c)
}

func (t *routeTable) unsetPeerLocked(c *claim) {
	if c.inPeer == nil {
		return
	}
	l := t.byPeer[c.peer]
	l.Remove(c.inPeer)
	if l.Len() == 0 {
		delete(t.byPeer, c.peer)
	}
	c.peer, c.inPeer = "", nil
}

// recentUse is how long after its last flow a learned route counts as
// used by the peers it serves, for eviction.
const recentUse = 10 * time.Minute

// evictOwnLocked drops the least recently seen claim peer taught (of app
// a, if a is not nil) whose address has no open flow, and reports whether
// it found one.
func (t *routeTable) evictOwnLocked(peer string, a *servedApp) bool {
	l := t.byPeer[peer]
	if peer == "" || l == nil {
		return false
	}
	for e := l.Front(); e != nil; e = e.Next() {
		c := e.Value.(*claim)
		if (a == nil || c.app == a) && !t.cfg.inUse(c.route.addr) {
			t.dropClaimLocked(c)
			t.stats.Evicted++
			return true
		}
	}
	return false
}

// evictLocked drops the least recently seen claim in l whose address has
// no open flow, preferring one no flow used within recentUse, and reports
// whether it found one.
func (t *routeTable) evictLocked(l *list.List, peer string) bool {
	recent := t.cfg.now().Add(-recentUse).UnixNano()
	for _, skipRecent := range []bool{true, false} {
		for e := l.Front(); e != nil; e = e.Next() {
			c := e.Value.(*claim)
			if t.cfg.inUse(c.route.addr) || (skipRecent && c.route.lastFlow.Load() > recent) {
				continue
			}
			t.dropClaimLocked(c)
			t.stats.Evicted++
			return true
		}
	}
	return false
}

func (t *routeTable) dropClaimLocked(c *claim) {
	heap.Remove(&t.due, c.heapIdx)
	c.app.claims.Remove(c.inApp)
	t.all.Remove(c.inAll)
	t.unsetPeerLocked(c)
	r := c.route
	r.claims = slices.DeleteFunc(r.claims, func(x *claim) bool { return x == c })
	if len(r.claims) == 0 {
		delete(t.learned, r.addr)
	}
	t.dirty = true
}

// allow reports whether peer p may open a flow to dst: dst is inside a
// configured route of an app p may use, or is a learned, approved route
// of one. An address inside the configured routes of an app p may not use
// is refused, unless an app p may use configures it too: a restricted
// app cannot be reached through another app's learned route.
func (t *routeTable) allow(p peerID, dst netip.Addr) bool {
	if !t.allowRoutes(p, dst) {
		return false
	}
	// An address the host has now, beyond those known at start (which
	// the forwarding sets already guard; loopback is guarded there too),
	// is forwarded to only through a configured route naming exactly it.
	if dst.IsLoopback() || !t.cfg.isLocal(dst) {
		return true
	}
	exact := netip.PrefixFrom(dst, dst.BitLen())
	t.mu.RLock()
	defer t.mu.RUnlock()
	for _, a := range t.apps {
		if a.usableBy(p) && slices.Contains(a.Routes, exact) {
			return true
		}
	}
	t.localRefused.Add(1)
	return false
}

// reachable reports whether allow would let peer p open a flow to dst,
// from the routes alone and without counting it as a flow.
func (t *routeTable) reachable(p peerID, dst netip.Addr) bool {
	return t.allowFromRoutes(p, dst, false)
}

// allowRoutes is allow's decision from the routes alone.
func (t *routeTable) allowRoutes(p peerID, dst netip.Addr) bool {
	return t.allowFromRoutes(p, dst, true)
}

// allowFromRoutes is allowRoutes; flow says whether to record a flow
// starting.
func (t *routeTable) allowFromRoutes(p peerID, dst netip.Addr, flow bool) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	restricted := false
	for _, a := range t.apps {
		if !a.covers.Contains(dst) {
			continue
		}
		if !a.usableBy(p) {
			restricted = true
		} else if a.forward.Contains(dst) {
			return true
		}
	}
	if restricted {
		return false
	}
	if r := t.learned[dst]; r != nil {
		for _, c := range r.claims {
			if c.approved && c.app.usableBy(p) {
				if flow {
					r.lastFlow.Store(t.cfg.now().UnixNano())
				}
				return true
			}
		}
	}
	return false
}

// origin names the route that lets peer p reach dst, for flow logs: its
// app, and the name it was learned from ("" for a configured route). For
// a destination no route of p's covers, both are "".
func (t *routeTable) origin(p peerID, dst netip.Addr) (app, domain string) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	for _, a := range t.apps {
		if a.usableBy(p) && a.covers.Contains(dst) {
			return a.Name, ""
		}
	}
	if r := t.learned[dst]; r != nil {
		for _, c := range r.claims {
			if c.app.usableBy(p) {
				return c.app.Name, c.domain
			}
		}
	}
	return "", ""
}

// approve approves the pending routes inside prefix (all of them if
// prefix is not valid) and returns how many it approved.
func (t *routeTable) approve(prefix netip.Prefix) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for e := t.all.Front(); e != nil; e = e.Next() {
		c := e.Value.(*claim)
		if !c.approved && (!prefix.IsValid() || prefix.Contains(c.route.addr)) {
			c.approved = true
			n++
		}
	}
	if n > 0 {
		t.dirty = true
		t.bumpLocked()
	}
	return n
}

// advertisement is what a peer is told: the prefixes to route through
// the connector, and the domains to ask it for.
type advertisement struct {
	prefixes []netip.Prefix
	domains  []string
}

// advertised returns the table version and what peer p is told: the
// configured routes of the apps it may use and their approved learned
// routes, as the smallest set of prefixes covering them (a learned route
// inside a configured one adds nothing), and those apps' domains.
func (t *routeTable) advertised(p peerID) (uint64, advertisement) {
	return t.advertisedFor(func(a *servedApp) bool { return a.usableBy(p) })
}

// advertisedAll is advertised for a peer that may use every app.
func (t *routeTable) advertisedAll() (uint64, advertisement) {
	return t.advertisedFor(func(*servedApp) bool { return true })
}

func (t *routeTable) advertisedFor(usable func(*servedApp) bool) (uint64, advertisement) {
	t.mu.RLock()
	var key []byte
	for _, a := range t.apps {
		if usable(a) {
			key = append(key, '1')
		} else {
			key = append(key, '0')
		}
	}
	if t.cacheVersion == t.version {
		if adv, ok := t.advCache[string(key)]; ok {
			v := t.version
			t.mu.RUnlock()
			return v, adv
		}
	}
	var b netipx.IPSetBuilder
	var domains []string
	for i, a := range t.apps {
		if key[i] == '0' {
			continue
		}
		domains = append(domains, a.Domains...)
		for _, r := range a.Routes {
			b.AddPrefix(r)
		}
		for e := a.claims.Front(); e != nil; e = e.Next() {
			if c := e.Value.(*claim); c.approved {
				b.Add(c.route.addr)
			}
		}
	}
	v := t.version
	t.mu.RUnlock()
	s, _ := b.IPSet()
	slices.Sort(domains)
	adv := advertisement{prefixes: s.Prefixes(), domains: slices.Compact(domains)}

	t.mu.Lock()
	if t.version == v {
		if t.cacheVersion != v {
			t.advCache, t.cacheVersion = map[string]advertisement{}, v
		}
		t.advCache[string(key)] = adv
	}
	t.mu.Unlock()
	return v, adv
}

// routes lists every route, configured and learned, for the admin API.
func (t *routeTable) routes() (uint64, []apptype.Route) {
	now := t.cfg.now()
	t.mu.RLock()
	defer t.mu.RUnlock()
	var out []apptype.Route
	for _, a := range t.apps {
		for _, r := range a.Routes {
			out = append(out, apptype.Route{Prefix: r, App: a.Name, Source: "configured", State: apptype.StateAdvertised})
		}
		for e := a.claims.Front(); e != nil; e = e.Next() {
			c := e.Value.(*claim)
			st := a.claimState(c)
			out = append(out, apptype.Route{
				Prefix: netip.PrefixFrom(c.route.addr, c.route.addr.BitLen()),
				App:    a.Name, Domain: c.domain, Source: "learned", State: st,
				FirstSeen: c.first, LastSeen: c.last,
				Expires: t.keepUntilLocked(c, now), InUse: t.cfg.inUse(c.route.addr),
			})
		}
	}
	slices.SortStableFunc(out, func(x, y apptype.Route) int {
		if c := x.Prefix.Addr().Compare(y.Prefix.Addr()); c != 0 {
			return c
		}
		return x.Prefix.Bits() - y.Prefix.Bits()
	})
	return t.version, out
}

// claimState is the state of a learned route as routes and countRoutes
// report it.
func (a *servedApp) claimState(c *claim) apptype.RouteState {
	switch {
	case !c.approved:
		return apptype.StatePending
	case a.covers.Contains(c.route.addr):
		return apptype.StateCoalesced
	}
	return apptype.StateAdvertised
}

// routeCount is the number of routes of one app, source and state.
type routeCount struct {
	app, source string
	state       apptype.RouteState
	n           int
}

// countRoutes counts the routes as routes would list them, without
// building the list (for metrics, with up to 100,000 learned routes).
func (t *routeTable) countRoutes() []routeCount {
	t.mu.RLock()
	defer t.mu.RUnlock()
	var out []routeCount
	for _, a := range t.apps {
		if len(a.Routes) > 0 {
			out = append(out, routeCount{a.Name, "configured", apptype.StateAdvertised, len(a.Routes)})
		}
		n := map[apptype.RouteState]int{}
		for e := a.claims.Front(); e != nil; e = e.Next() {
			n[a.claimState(e.Value.(*claim))]++
		}
		for _, st := range []apptype.RouteState{apptype.StateAdvertised, apptype.StatePending, apptype.StateCoalesced} {
			if n[st] > 0 {
				out = append(out, routeCount{a.Name, "learned", st, n[st]})
			}
		}
	}
	return out
}

// watch returns the current version and a channel closed when it changes.
func (t *routeTable) watch() (uint64, <-chan struct{}) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.version, t.changed
}

func (t *routeTable) bumpLocked() {
	t.version++
	close(t.changed)
	t.changed = make(chan struct{})
}

func (t *routeTable) statsSnapshot() tableStats {
	t.mu.RLock()
	st := t.stats
	t.mu.RUnlock()
	st.LocalRefused = t.localRefused.Load()
	return st
}

// countChainRefused counts an answer whose chain yielded no routes, or
// reached an app the asking peer may not use.
func (t *routeTable) countChainRefused() {
	t.mu.Lock()
	t.stats.ChainRefused++
	t.mu.Unlock()
}
