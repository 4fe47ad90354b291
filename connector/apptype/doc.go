// Package apptype is the vocabulary the server, the client and the CLI
// share: the policy (apps, their domains and routes) and its parser,
// domain normalization and matching, and the route types of the admin API
// and the route API. It is plain data and parsing: nothing here needs a
// running connector, so the client library links none of the server.
package apptype
