package client

import (
	"bufio"
	"io"
	"net"
	"strings"

	"github.com/appconnector/appconnector/connector/wireguard"
)

// ServeUAPI serves WireGuard's userspace API on ln, read only, as one
// interface: the client keeps a WireGuard device per connector, and `wg
// show` lists them as that interface's peers (the interface lines, such
// as the listen port, are the first device's). Changes are refused. Serve
// it only where the operator alone can reach it: the answer holds the
// private key.
func (c *Client) ServeUAPI(ln net.Listener) error {
	return wireguard.ServeUAPI(ln, c.uapiGet)
}

func (c *Client) uapiGet(w io.Writer) error {
	for i, l := range c.links {
		dump, err := l.dev.IpcGet()
		if err != nil {
			return err
		}
		sc := bufio.NewScanner(strings.NewReader(dump))
		inPeers := false
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "public_key=") {
				inPeers = true
			}
			if i == 0 || inPeers {
				if _, err := io.WriteString(w, line+"\n"); err != nil {
					return err
				}
			}
		}
	}
	return nil
}
