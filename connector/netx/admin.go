package netx

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// NotForBrowsers wraps an admin HTTP handler, served on a unix socket or a
// loopback address, so that web browsers cannot use it: a request with an
// Origin or Sec-Fetch-Site header, or whose Host is neither a loopback
// address nor "admin" (the name local clients give a unix socket), gets
// 403. A web page in the operator's browser can then reach the handler
// neither by a form nor by DNS rebinding.
func NotForBrowsers(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Origin") != "" || r.Header.Get("Sec-Fetch-Site") != "" || !adminHost(r.Host) {
			http.Error(w, "forbidden: the admin API is not for browsers", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// adminHost reports whether an admin request's Host is one a local client
// uses: "admin" (a unix socket) or a loopback address.
func adminHost(host string) bool {
	if host == "admin" {
		return true
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	a, err := netip.ParseAddr(strings.Trim(host, "[]"))
	return err == nil && a.IsLoopback()
}
