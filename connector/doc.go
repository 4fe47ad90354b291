// Package connector is the app connector proper: it makes applications,
// named by domain, reachable through one WireGuard egress point.
//
// An app policy (see ParsePolicy and LoadPolicy) lists the apps, the
// connectors that serve each one, and the domains and address routes that
// belong to it. The package owns DNS interception for those domains,
// domain matching, and the route table that decides which flows are
// forwarded.
package connector
