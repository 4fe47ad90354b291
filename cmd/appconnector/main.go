// Command appconnector is a userspace WireGuard app connector: it forwards
// its peers' flows to the routes of configured apps through the host's
// ordinary sockets, with no TUN device and no privileges.
//
//	appconnector up [--config FILE] [--policy FILE] [--state DIR] [--listen ADDR] ...
//	appconnector routes [--json | --format allowed-ips] | routes approve PREFIX|--all
//	appconnector client --config FILE [--socks5 ADDR] [--http ADDR] [--dns ADDR] [--admin ADDR] ...
//	appconnector status --admin ADDR
//	appconnector genkey
//	appconnector pubkey < private.key
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/appconnector/appconnector/connector/demo"
	"github.com/appconnector/appconnector/connector/wireguard"
)

const usage = `usage:
  appconnector demo               run the whole loop on this machine (no config, no internet)
  appconnector up [flags]         run the connector (no flags: the embedded default setup)
  appconnector client [flags]     the client sidecar: SOCKS5, HTTP proxy and split DNS on loopback
  appconnector status --admin A   print a running client's connectors, routes, DNS and proxy counters
  appconnector routes [flags]     list the routes of a running connector
  appconnector routes approve PREFIX|--all
                                  approve pending learned routes
  appconnector genkey             print a new private key (like wg genkey)
  appconnector pubkey             read a private key on stdin, print its public key (like wg pubkey)

Run "appconnector COMMAND --help" for the flags of a command.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run is main without the process: it returns the exit code.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "demo":
		if err := demo.Run(context.Background(), stdout, slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))); err != nil {
			fmt.Fprintf(stderr, "appconnector demo: %v\n", err)
			return 1
		}
		return 0
	case "up":
		return up(args[1:], stdout, stderr)
	case "routes":
		return routes(args[1:], stdout, stderr)
	case "client":
		return runClient(args[1:], stdout, stderr)
	case "status":
		return status(args[1:], stdout, stderr)
	case "genkey":
		return genkey(stdout, stderr)
	case "pubkey":
		return pubkey(stdin, stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "appconnector: unknown command %q\n\n%s", args[0], usage)
	return 2
}

func genkey(stdout, stderr io.Writer) int {
	k, err := wireguard.GeneratePrivateKey()
	if err != nil {
		fmt.Fprintf(stderr, "appconnector genkey: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, k)
	return 0
}

func pubkey(stdin io.Reader, stdout, stderr io.Writer) int {
	in, err := io.ReadAll(io.LimitReader(stdin, 1024))
	if err != nil {
		fmt.Fprintf(stderr, "appconnector pubkey: read stdin: %v\n", err)
		return 1
	}
	k, err := wireguard.ParseKey(strings.TrimSpace(string(in)))
	if err != nil {
		fmt.Fprintf(stderr, "appconnector pubkey: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, k.PublicKey())
	return 0
}
