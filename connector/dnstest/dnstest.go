// Package dnstest starts dnszone servers for tests: each stops when its
// test ends.
package dnstest

import (
	"testing"

	"github.com/appconnector/appconnector/connector/dnszone"
)

// New starts a dnszone server with the given records (e.g.
// "app.example.com. 60 IN A 192.0.2.1") and stops it when the test ends.
func New(tb testing.TB, records ...string) *dnszone.Server {
	tb.Helper()
	s, err := dnszone.Start(records...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Close)
	return s
}
