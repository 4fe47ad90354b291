// Command appconnector is a userspace WireGuard app connector: it forwards
// its peers' flows to the routes of configured apps through the host's
// ordinary sockets, with no TUN device and no privileges.
//
//	appconnector up [--config FILE] [--policy FILE] [--state DIR] [--listen ADDR] [--log-level LEVEL]
//	appconnector genkey
//	appconnector pubkey < private.key
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/wgconf"
)

const usage = `usage:
  appconnector up [flags]     run the connector (no flags: the embedded default setup)
  appconnector genkey         print a new private key (like wg genkey)
  appconnector pubkey         read a private key on stdin, print its public key (like wg pubkey)

Run "appconnector up --help" for the flags of up.
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
	case "up":
		return up(args[1:], stdout, stderr)
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
	k, err := wgconf.GeneratePrivateKey()
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
	k, err := wgconf.ParseKey(strings.TrimSpace(string(in)))
	if err != nil {
		fmt.Fprintf(stderr, "appconnector pubkey: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, k.PublicKey())
	return 0
}

type upFlags struct {
	config, policy, state, listen, logLevel string
}

func up(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("appconnector up", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f upFlags
	fs.StringVar(&f.config, "config", "", "wg-quick `file` of the connector's interface and peers (default: the embedded default setup in --state)")
	fs.StringVar(&f.policy, "policy", "", "JSON `file` of apps: [{\"name\",\"connectors\",\"domains\",\"routes\"}] (default: no apps, nothing forwarded)")
	fs.StringVar(&f.state, "state", "", "state `directory` (default: $XDG_STATE_HOME/appconnector or ~/.local/state/appconnector)")
	fs.StringVar(&f.listen, "listen", "", "host `address` for the WireGuard UDP socket, as IP or IP:port (default: all addresses)")
	fs.StringVar(&f.logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "appconnector up: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		fmt.Fprintf(stderr, "appconnector up: --log-level %q: want debug, info, warn or error\n", f.logLevel)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := runUp(ctx, f, stdout, log); err != nil {
		// Plain text, not a log record: the message names a file, line
		// and value that should read exactly as written.
		fmt.Fprintf(stderr, "appconnector up: %v\n", err)
		return 1
	}
	return 0
}

// runUp loads the configuration, runs the connector until ctx ends, then
// shuts it down.
func runUp(ctx context.Context, f upFlags, stdout io.Writer, log *slog.Logger) error {
	listenAddr, listenPort, err := parseListen(f.listen)
	if err != nil {
		return err
	}
	var policy *connector.Policy
	if f.policy != "" {
		if policy, err = connector.LoadPolicy(f.policy); err != nil {
			return err
		}
	} else {
		policy = &connector.Policy{}
	}
	if len(policy.Apps) == 0 {
		log.Warn("the policy has no apps: nothing will be forwarded", "policy", f.policy)
	}

	var cfg *wgconf.Config
	var warns []wgconf.Warning
	if f.config != "" {
		if cfg, warns, err = wgconf.Load(f.config); err != nil {
			return err
		}
	} else {
		dir := f.state
		if dir == "" {
			if dir, err = defaultStateDir(); err != nil {
				return err
			}
		}
		var endpointHost netip.Addr
		if listenAddr.IsValid() && !listenAddr.IsUnspecified() {
			endpointHost = listenAddr
		}
		st, err := connector.LoadOrCreateState(connector.StateOptions{
			Dir:          dir,
			ListenPort:   listenPort,
			EndpointHost: endpointHost,
			Routes:       policy.Routes(),
		})
		if err != nil {
			return err
		}
		cfg, warns = st.Config, st.Warnings
		if st.Created {
			log.Info("created a new connector identity", "dir", dir)
		}
		fmt.Fprintf(stdout, "client config: %s\n", st.ClientPath)
	}
	for _, w := range warns {
		log.Warn(w.String())
	}
	switch {
	case listenPort == 0:
	case cfg.Interface.ListenPort == 0:
		cfg.Interface.ListenPort = listenPort
	case cfg.Interface.ListenPort != listenPort:
		return fmt.Errorf("--listen port %d differs from ListenPort = %d in %s", listenPort, cfg.Interface.ListenPort, f.config)
	}

	c, err := connector.New(connector.Config{
		WireGuard:  cfg,
		ListenAddr: listenAddr,
		Policy:     policy,
		HostAddrs:  hostAddrs(log),
		Logger:     log,
	})
	if err != nil {
		return err
	}
	log.Info("forwarding", "routes", fmt.Sprint(c.Routes()))
	<-ctx.Done()
	log.Info("shutting down")
	return c.Close()
}

// parseListen accepts "", "IP" or "IP:port".
func parseListen(s string) (netip.Addr, uint16, error) {
	if s == "" {
		return netip.Addr{}, 0, nil
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr(), ap.Port(), nil
	}
	a, err := netip.ParseAddr(strings.Trim(s, "[]"))
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("--listen %q: want an IP address or IP:port", s)
	}
	return a, 0, nil
}

func defaultStateDir() (string, error) {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "appconnector"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil || home == "" || home == "/" || home == "/nonexistent" {
		return "", errors.New("no home directory for the default state; pass --state DIR")
	}
	return filepath.Join(home, ".local", "state", "appconnector"), nil
}

// hostAddrs lists this host's interface addresses.
func hostAddrs(log *slog.Logger) []netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		log.Warn("cannot list the host's addresses; they are not excluded from forwarding", "err", err)
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr())
		}
	}
	return out
}
