package connector

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/appconnector/appconnector/connector/apptype"
	"github.com/appconnector/appconnector/connector/netx"
)

// Two HTTP APIs:
//
// The route API is served to peers inside the tunnel, on port 80 of each
// tunnel address: GET /v1/routes answers the prefixes that peer should
// route through this connector, with the table's version; with ?watch=1
// the response is a stream of one JSON object per line, a new one each
// time the table changes. Only peers can reach it: it exists only inside
// the userspace stack.
//
// The admin API is for the operator on the host (cmd/appconnector serves
// it on a unix socket or a loopback address): GET /v1/routes lists every
// route with its app, domain, source and state; POST /v1/routes/approve
// approves pending routes.

// watchKeepalive is how often a watch stream with no change repeats the
// current version, so a client notices a dead connector.
const watchKeepalive = 25 * time.Second

// watchCoalesce is the least time between two updates on a watch stream:
// a burst of learned routes becomes one update, not one per route.
const watchCoalesce = 100 * time.Millisecond

// Limits of the route API. A request is a GET with a few short headers;
// a watch stream is one goroutine and a connection's buffers (~40 KiB)
// for as long as the peer keeps it.
const (
	DefaultMaxAPIConns        = 1024
	DefaultMaxAPIConnsPerPeer = 16
	DefaultMaxWatchesPerPeer  = 4
	// apiMaxHeaderBytes bounds a request's header (net/http allows 4 KiB
	// more for its own reading).
	apiMaxHeaderBytes = 4 << 10
	// apiHeaderTimeout bounds reading a request's header, apiIdleTimeout
	// a kept-alive connection between requests.
	apiHeaderTimeout = 5 * time.Second
	apiIdleTimeout   = 30 * time.Second
	// watchWriteTimeout: a watch stream whose peer takes longer than this
	// to take an update (or a keepalive) is closed.
	watchWriteTimeout = 10 * time.Second
)

// peerAPI serves the route API.
type peerAPI struct {
	c       *Connector
	servers []*http.Server
	wg      sync.WaitGroup // servers and handlers
	conns   connLimit      // connections, per peer and in all
	watches connLimit      // watch streams, per peer and in all
}

// tracked counts h's running handlers in wg, so close can wait for them
// (http.Server.Close does not).
func tracked(wg *sync.WaitGroup, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		wg.Add(1)
		defer wg.Done()
		h.ServeHTTP(w, r)
	})
}

func (c *Connector) startPeerAPI(lns []net.Listener, cfg *Config) {
	maxConns := orDefault(cfg.MaxAPIConns, DefaultMaxAPIConns)
	a := &peerAPI{c: c,
		conns:   connLimit{max: maxConns, perPeer: orDefault(cfg.MaxAPIConnsPerPeer, DefaultMaxAPIConnsPerPeer)},
		watches: connLimit{max: maxConns / 2, perPeer: orDefault(cfg.MaxWatchesPerPeer, DefaultMaxWatchesPerPeer)},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/routes", a.routes)
	for _, ln := range lns {
		srv := &http.Server{
			Handler:           tracked(&a.wg, mux),
			ReadHeaderTimeout: apiHeaderTimeout,
			IdleTimeout:       apiIdleTimeout,
			MaxHeaderBytes:    apiMaxHeaderBytes,
			// Its own complaints (a peer's malformed request) would be
			// a peer's way into the log; net/http answers them anyway.
			ErrorLog: log.New(io.Discard, "", 0),
		}
		a.servers = append(a.servers, srv)
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			srv.Serve(&limitListener{Listener: ln, lim: &a.conns, peerOf: c.peerOfAddr, logf: c.dns.logf, what: "route API"})
		}()
	}
	c.api = a
}

func (a *peerAPI) close() {
	for _, srv := range a.servers {
		srv.Close()
	}
	a.wg.Wait()
}

func (a *peerAPI) routes(w http.ResponseWriter, r *http.Request) {
	src, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		http.Error(w, "unknown peer", http.StatusForbidden)
		return
	}
	peer := a.c.peers.lookup(src.Addr().Unmap())
	w.Header().Set("Content-Type", "application/json")
	if r.URL.Query().Get("watch") == "" {
		v, adv := a.c.table.advertised(peer)
		json.NewEncoder(w).Encode(routeSet(v, adv))
		return
	}
	if !a.watches.take(peer.key) {
		a.watches.refused.Add(1)
		w.Header().Set("Retry-After", strconv.Itoa(int(watchKeepalive.Seconds())))
		http.Error(w, "too many watch streams", http.StatusTooManyRequests)
		return
	}
	defer a.watches.give(peer.key)
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	keepalive := time.NewTicker(watchKeepalive)
	defer keepalive.Stop()
	// With diff=1 the first line is the whole set ("full": true) and each
	// later one only what changed since the line before: with thousands
	// of routes, a full set per change cost every watcher megabytes for a
	// few bytes of question.
	diff := r.URL.Query().Get("diff") == "1"
	var last advertisement
	sent, first := false, true
	for {
		_, changed := a.c.table.watch()
		v, adv := a.c.table.advertised(peer)
		// Only this peer's routes matter: a change to an app it may not
		// use sends nothing (and so tells it nothing).
		if !sent || !slices.Equal(adv.prefixes, last.prefixes) || !slices.Equal(adv.domains, last.domains) {
			// A peer that does not read holds the stream only this long.
			if err := rc.SetWriteDeadline(time.Now().Add(watchWriteTimeout)); err != nil {
				return
			}
			var line any = routeSet(v, adv)
			switch {
			case diff && first:
				rs := routeSet(v, adv)
				rs.Full = true
				line = rs
			case diff:
				line = routeDiff(v, last, adv)
			}
			if err := enc.Encode(line); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
			last, sent, first = adv, true, false
		}
		select {
		case <-changed:
			select {
			case <-time.After(watchCoalesce):
			case <-r.Context().Done():
				return
			}
		case <-keepalive.C:
			sent = false // repeat the current version
		case <-r.Context().Done():
			return
		case <-a.c.ctx.Done():
			return
		}
	}
}

// routeDiff is the change from advertisement prev to cur (both sorted).
func routeDiff(v uint64, prev, cur advertisement) apptype.RouteDiff {
	d := apptype.RouteDiff{Version: v}
	i, j := 0, 0
	for i < len(prev.prefixes) || j < len(cur.prefixes) {
		switch {
		case j == len(cur.prefixes) || (i < len(prev.prefixes) && prefixLess(prev.prefixes[i], cur.prefixes[j])):
			d.Removed = append(d.Removed, prev.prefixes[i])
			i++
		case i == len(prev.prefixes) || prefixLess(cur.prefixes[j], prev.prefixes[i]):
			d.Added = append(d.Added, cur.prefixes[j])
			j++
		default:
			i++
			j++
		}
	}
	if !slices.Equal(prev.domains, cur.domains) {
		ds := slices.Clone(cur.domains)
		if ds == nil {
			ds = []string{}
		}
		d.Domains = &ds
	}
	return d
}

func prefixLess(a, b netip.Prefix) bool {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c < 0
	}
	return a.Bits() < b.Bits()
}

func routeSet(v uint64, adv advertisement) apptype.RouteSet {
	rs := apptype.RouteSet{Version: v, Routes: adv.prefixes, Domains: adv.domains}
	if rs.Routes == nil {
		rs.Routes = []netip.Prefix{}
	}
	if rs.Domains == nil {
		rs.Domains = []string{}
	}
	return rs
}

// AdminHandler returns the admin API. It must be served only where the
// operator alone can reach it (a unix socket with mode 0600, or a loopback
// address).
//
//	GET  /v1/routes                      every route, JSON ([]Route)
//	GET  /v1/routes?format=allowed-ips   the advertised prefixes as one AllowedIPs line
//	POST /v1/routes/approve?prefix=P     approve pending routes inside P
//	POST /v1/routes/approve?all=1        approve every pending route
//	GET  /metrics                        Prometheus metrics
//	GET  /healthz                        200 "ok" while serving; 503 while draining or closed, or
//	                                     when no DNS upstream has answered for 30 s (the reason in the body)
//
// Requests from web browsers are refused (any Origin or Sec-Fetch-Site
// header, or a Host that is not a loopback address or "admin"), so a web
// page cannot drive the API through the operator's browser, by a form or
// by DNS rebinding.
func (c *Connector) AdminHandler() http.Handler {
	mux := http.NewServeMux()

	mux.HandleFunc("GET /v1/routes", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("format") == "allowed-ips" {
			_, all := c.table.advertisedAll()
			strs := make([]string, len(all.prefixes))
			for i, p := range all.prefixes {
				strs[i] = p.String()
			}
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			fmt.Fprintln(w, strings.Join(strs, ", "))
			return
		}
		v, rs := c.table.routes()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(struct {
			Version uint64          `json:"version"`
			Routes  []apptype.Route `json:"routes"`
		}{v, nonNilRoutes(rs)})
	})
	mux.Handle("GET /metrics", newMetrics(c).handler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		switch {
		case c.closed.Load():
			http.Error(w, "closed", http.StatusServiceUnavailable)
		case c.draining.Load():
			http.Error(w, "draining", http.StatusServiceUnavailable)
		default:
			if why := c.dns.unhealthy(); why != "" {
				http.Error(w, why, http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
		}
	})
	mux.HandleFunc("POST /v1/routes/approve", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		var prefix netip.Prefix
		switch {
		case q.Get("all") == "1" && q.Get("prefix") == "":
		case q.Get("prefix") != "" && q.Get("all") == "":
			p, err := parsePrefixOrAddr(q.Get("prefix"))
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			prefix = p
		default:
			http.Error(w, "give either prefix=P or all=1", http.StatusBadRequest)
			return
		}
		n := c.table.approve(prefix)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(struct {
			Approved int `json:"approved"`
		}{n})
	})
	return netx.NotForBrowsers(mux)
}

func nonNilRoutes(rs []apptype.Route) []apptype.Route {
	if rs == nil {
		return []apptype.Route{}
	}
	return rs
}

// parsePrefixOrAddr parses "192.0.2.0/24" or a bare address.
func parsePrefixOrAddr(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		if p != p.Masked() {
			return netip.Prefix{}, fmt.Errorf("prefix %s has host bits set (did you mean %s?)", p, p.Masked())
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, errors.New("want a prefix such as 192.0.2.0/24 or an address")
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}
