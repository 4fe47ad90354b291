package apptype

import (
	"net/netip"
	"time"
)

// The routes as the admin API lists them and as the route API tells
// peers: the wire types the server, the client and the CLI share.

// RouteState is where a route stands.
type RouteState string

// Route states.
const (
	// Advertised routes are forwarded and announced to peers.
	StateAdvertised RouteState = "advertised"
	// Pending routes were learned for an app with manual approval and
	// wait for an operator; they are neither forwarded nor announced.
	StatePending RouteState = "pending"
	// Coalesced routes were learned inside one of the app's configured
	// routes: the configured prefix covers them, so they are not announced
	// on their own.
	StateCoalesced RouteState = "coalesced"
)

// Route is one entry of the route table as the admin API shows it.
type Route struct {
	Prefix    netip.Prefix `json:"prefix"`
	App       string       `json:"app"`
	Domain    string       `json:"domain,omitempty"` // the name it was learned from; empty if configured
	Source    string       `json:"source"`           // "configured" or "learned"
	State     RouteState   `json:"state"`
	FirstSeen time.Time    `json:"firstSeen,omitzero"`
	LastSeen  time.Time    `json:"lastSeen,omitzero"`
	// Expires is when a learned route goes unless DNS names it again
	// or a flow uses it: its answer's lifetime, or the grace period after
	// its last flow, whichever ends later. A route with an open flow does
	// not expire while the flow lasts.
	Expires time.Time `json:"expires,omitzero"`
	InUse   bool      `json:"inUse,omitempty"` // a flow to it is open now
}

// RouteSet is what the route API answers.
type RouteSet struct {
	// Version is the route table's version; it grows with every change.
	Version uint64 `json:"version"`
	// Routes are the prefixes the peer should send through this
	// connector.
	Routes []netip.Prefix `json:"routes"`
	// Domains are the domains of the apps the peer may use (the policy's
	// form: "example.com", "*.example.com"): names to ask this connector.
	Domains []string `json:"domains"`
	// Full marks the first line of a ?watch=1&diff=1 stream, the whole
	// set; the lines after it are RouteDiffs.
	Full bool `json:"full,omitempty"`
}

// RouteDiff is a line of a ?watch=1&diff=1 stream after the first: the
// routes added and removed since the line before, and the domains when
// they changed (absent: unchanged). A line with only the version repeats
// it (a keepalive).
type RouteDiff struct {
	Version uint64         `json:"version"`
	Added   []netip.Prefix `json:"added,omitempty"`
	Removed []netip.Prefix `json:"removed,omitempty"`
	Domains *[]string      `json:"domains,omitempty"`
}
