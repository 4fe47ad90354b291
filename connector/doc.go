// Package connector is the app connector's server: it makes applications,
// named by domain, reachable through one WireGuard egress point.
//
// The app policy (package apptype) lists the apps, the connectors that
// serve each one, and the domains and address routes that belong to it.
// This package owns DNS interception for those domains and its upstreams,
// the route table that decides which flows are forwarded (learning,
// lifetimes, persistence), the route API peers follow, the admin API and
// the metrics.
package connector
