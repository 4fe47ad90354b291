package upstream

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/miekg/dns"
)

// SystemResolvers returns the "ip:port" name servers of a resolv.conf
// file, such as /etc/resolv.conf.
func SystemResolvers(path string) ([]string, error) {
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	var out []string
	for _, s := range cc.Servers {
		a, err := netip.ParseAddr(s)
		if err != nil {
			continue // a zone or a name; not usable as an upstream here
		}
		out = append(out, net.JoinHostPort(a.String(), cc.Port))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s lists no name servers", path)
	}
	return out, nil
}
