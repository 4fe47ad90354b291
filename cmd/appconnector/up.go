package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/apptype"
	"github.com/appconnector/appconnector/connector/flowlog"
	"github.com/appconnector/appconnector/connector/logger"
	"github.com/appconnector/appconnector/connector/upstream"
	"github.com/appconnector/appconnector/connector/wireguard"
	"github.com/appconnector/appconnector/netstack"
)

type upFlags struct {
	config, policy, state, listen, logLevel string
	dnsUpstream, tags, admin, uapi          string
	dnsUpstreamCA                           string
	dnsForwardAll                           bool
	routeTTLMax, routeTTLMin, routeGrace    time.Duration
	drainTimeout                            time.Duration
	maxRoutes, maxRoutesPerApp              int
	maxRoutesPerPeer                        int
	flowLog                                 string
	flowLogMaxSize                          int64
}

func up(args []string, stdout, stderr io.Writer) int {
	var f upFlags
	fs := upFlagSet(&f, stderr)
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
	if err := checkLifetimes(f); err != nil {
		fmt.Fprintf(stderr, "appconnector up: %v\n", err)
		return 2
	}
	log, err := newLogger(stderr, f.logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "appconnector up: %v\n", err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if err := runUp(ctx, f, hup, stdout, log); err != nil {
		// Plain text, not a log record: the message names a file, line
		// and value that should read exactly as written.
		fmt.Fprintf(stderr, "appconnector up: %v\n", err)
		return 1
	}
	return 0
}

// upFlagSet is the flag set of `appconnector up`, filling f.
func upFlagSet(f *upFlags, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("appconnector up", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.config, "config", "", "wg-quick `file` of the connector's interface and peers (default: the embedded default setup in --state)")
	fs.StringVar(&f.policy, "policy", "", "`file` of apps: a JSON list, {\"apps\": [...]}, or a Tailscale policy file (default: no apps, nothing forwarded); re-read on SIGHUP and on change")
	fs.StringVar(&f.state, "state", "", "state `directory`: keys of the embedded default, learned routes, admin socket (default: $XDG_STATE_HOME/appconnector or ~/.local/state/appconnector)")
	fs.StringVar(&f.listen, "listen", "", "host `address` for the WireGuard UDP socket, as IP or IP:port (default: all addresses)")
	fs.StringVar(&f.logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	fs.StringVar(&f.dnsUpstream, "dns-upstream", "", "DNS `servers` for app names, tried in order: ip[:port], tls://host[:853] (DNS over TLS) or https://host/dns-query (DNS over HTTPS), comma-separated (default: the name servers of /etc/resolv.conf)")
	fs.StringVar(&f.dnsUpstreamCA, "dns-upstream-ca", "", "PEM `file` of CA certificates trusted, besides the system's, for tls:// and https:// upstreams")
	fs.BoolVar(&f.dnsForwardAll, "dns-forward-all", false, "also resolve names of no app (without learning routes); by default they are REFUSED")
	fs.StringVar(&f.tags, "tags", connector.DefaultTag, "this connector's `tags`, comma-separated: it serves the apps whose connectors name one of them")
	fs.StringVar(&f.admin, "admin", "", "admin API `address`: a loopback IP:port, or a unix socket path (default: admin.sock in --state)")
	fs.DurationVar(&f.routeTTLMax, "route-ttl-max", connector.DefaultRouteTTLMax, "the longest a learned route lives after the last DNS answer that named it")
	fs.DurationVar(&f.routeTTLMax, "route-ttl", connector.DefaultRouteTTLMax, "the older name of --route-ttl-max")
	fs.DurationVar(&f.routeTTLMin, "route-ttl-min", connector.DefaultRouteTTLMin, "the shortest a learned route lives after the last DNS answer that named it; between the two, the answer's TTL decides (0: every route lives --route-ttl-max)")
	fs.DurationVar(&f.routeGrace, "route-grace", connector.DefaultRouteGrace, "a learned route lives at least this long after its last flow ended (never expires while a flow uses it)")
	fs.StringVar(&f.uapi, "uapi", "", "serve WireGuard's status read-only for `wg show NAME`: a NAME (socket /var/run/wireguard/NAME.sock) or a socket path")
	fs.DurationVar(&f.drainTimeout, "drain-timeout", 10*time.Second, "on SIGTERM or SIGINT, refuse new flows and wait this long for open ones to end before resetting them")
	fs.IntVar(&f.maxRoutes, "max-routes", connector.DefaultMaxRoutes, "most learned routes in all")
	fs.IntVar(&f.maxRoutesPerApp, "max-routes-per-app", connector.DefaultMaxRoutesPerApp, "most learned routes per app")
	fs.IntVar(&f.maxRoutesPerPeer, "max-routes-per-peer", 0, "most learned routes one peer's questions may hold (0: --max-routes)")
	fs.StringVar(&f.flowLog, "flow-log", "", "write a JSON line per flow to this `file` (created 0600): when it ends, every 5 minutes while open, and refused flows aggregated per second; reopened on SIGHUP")
	fs.Int64Var(&f.flowLogMaxSize, "flow-log-max-size", 0, "rotate the flow log at this many `MiB`, keeping 3 older files (FILE.1 newest); 0: never (rotate with logrotate and SIGHUP)")
	return fs
}

// runUp loads the configuration, runs the connector until ctx ends, then
// shuts it down. A value on reload re-reads the policy.
func runUp(ctx context.Context, f upFlags, reload <-chan os.Signal, stdout io.Writer, log *slog.Logger) error {
	listenAddr, listenPort, err := parseListen(f.listen)
	if err != nil {
		return err
	}
	tags, err := parseTags(f.tags)
	if err != nil {
		return err
	}
	upstreams, err := parseServers("dns-upstream", f.dnsUpstream, true)
	if err != nil {
		return err
	}
	var upstreamOpts upstream.Options
	if f.dnsUpstreamCA != "" {
		if upstreamOpts.RootCAs, err = loadRoots(f.dnsUpstreamCA); err != nil {
			return err
		}
	}
	if len(upstreams) == 0 {
		if upstreams, err = upstream.SystemResolvers("/etc/resolv.conf"); err != nil {
			log.Warn("no DNS upstream: app names will get SERVFAIL; pass --dns-upstream", "err", err)
		}
	}
	policy := &apptype.Policy{}
	var policyFile *policyWatcher
	if f.policy != "" {
		if policyFile, policy, err = newPolicyWatcher(f.policy); err != nil {
			return err
		}
	}
	if len(policy.AppsFor(tags)) == 0 {
		log.Warn("the policy has no apps for this connector's tags: nothing will be forwarded", "policy", f.policy, "tags", f.tags)
	}

	dir := f.state
	if dir == "" {
		if dir, err = defaultStateDir(); err != nil && f.config == "" {
			return err
		}
	}
	var cfg *wireguard.Config
	var warns []wireguard.Warning
	if f.config != "" {
		if cfg, warns, err = wireguard.Load(f.config); err != nil {
			return err
		}
	} else {
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
	if f.config != "" && len(cfg.Interface.DNS)+len(cfg.Interface.DNSSearch) > 0 {
		log.Warn(fmt.Sprintf("%s: key DNS ignored: the connector answers DNS on its tunnel addresses itself", f.config))
	}
	switch {
	case listenPort == 0:
	case cfg.Interface.ListenPort == 0:
		cfg.Interface.ListenPort = listenPort
	case cfg.Interface.ListenPort != listenPort:
		return fmt.Errorf("--listen port %d differs from ListenPort = %d in %s", listenPort, cfg.Interface.ListenPort, f.config)
	}
	if dir != "" {
		if err := connector.PrepareStateDir(dir); err != nil {
			return err
		}
	} else {
		log.Warn("no state directory: learned routes will not survive a restart and there is no admin socket; pass --state")
	}

	flows, err := openFlowLog(f.flowLog, f.flowLogMaxSize, log)
	if err != nil {
		return err
	}
	if flows != nil {
		defer flows.Close() // after the connector's Close, deferred below
	}
	caps := flowCaps(log)
	c, err := connector.New(connector.Config{
		FlowLog:            flows,
		Netstack:           caps,
		WireGuard:          cfg,
		ListenAddr:         listenAddr,
		Policy:             policy,
		Tags:               tags,
		DNSUpstreams:       upstreams,
		DNSUpstreamOptions: upstreamOpts,
		DNSForwardAll:      f.dnsForwardAll,
		RouteTTLMax:        f.routeTTLMax,
		RouteTTLMin:        negativeIfZero(f.routeTTLMin),
		RouteGrace:         negativeIfZero(f.routeGrace),
		MaxRoutes:          f.maxRoutes,
		MaxRoutesPerApp:    f.maxRoutesPerApp,
		MaxRoutesPerPeer:   f.maxRoutesPerPeer,
		StateDir:           dir,
		HostAddrs:          hostAddrs(log),
		Logger:             log,
	})
	if err != nil {
		return err
	}
	defer c.Close()
	stopAdmin, err := serveAdmin(c.AdminHandler(), f.admin, dir, log)
	if err != nil {
		return err
	}
	defer stopAdmin()
	stopUAPI, err := serveUAPI(c.ServeUAPI, f.uapi, log)
	if err != nil {
		return err
	}
	defer stopUAPI()
	log.Info("serving", "apps", len(policy.AppsFor(tags)), "dns-upstreams", strings.Join(upstreams, ","))

	var poll <-chan time.Time
	if policyFile != nil {
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		poll = t.C
	}
	for {
		select {
		case <-ctx.Done():
			st := c.Stats().Netstack
			log.Info("shutting down: refusing new flows, draining open TCP flows", "tcp", st.OpenTCPFlows,
				"udp", st.OpenFlows-st.OpenTCPFlows-st.OpenICMPFlows, "icmp", st.OpenICMPFlows, "timeout", f.drainTimeout)
			dctx, cancel := context.WithTimeout(context.Background(), f.drainTimeout)
			defer cancel()
			if err := c.Shutdown(dctx); err != nil {
				log.Warn("drain timeout: open flows reset", "err", err)
			} else {
				log.Info("drained")
			}
			return nil
		case <-reload:
			if flows != nil {
				flows.Reopen()
				log.Info("SIGHUP: reopening the flow log", "file", f.flowLog)
			}
			if policyFile != nil {
				policyFile.reload(c, log, true)
			} else if flows == nil {
				log.Info("SIGHUP: no --policy file to re-read, no --flow-log to reopen")
			}
		case <-poll:
			policyFile.reload(c, log, false)
		}
	}
}

// openFlowLog opens the --flow-log file, if one is named.
func openFlowLog(path string, maxMiB int64, log *slog.Logger) (*flowlog.Writer, error) {
	if path == "" {
		return nil, nil
	}
	if maxMiB < 0 {
		return nil, fmt.Errorf("--flow-log-max-size %d: want 0 (no rotation) or a size in MiB", maxMiB)
	}
	w, err := flowlog.Open(flowlog.Config{Path: path, MaxSize: maxMiB << 20,
		Logf: logger.RateLimit(logger.Slog(log, slog.LevelWarn), 1, 5)})
	if err != nil {
		return nil, fmt.Errorf("--flow-log: %w", err)
	}
	log.Info("flow log", "file", path, "max-size-mib", maxMiB)
	return w, nil
}

// serveAdmin serves the admin API on addr (a loopback IP:port or a unix
// socket path), or on admin.sock in dir if addr is empty. It returns a
// function that stops it.
func serveAdmin(h http.Handler, addr, dir string, log *slog.Logger) (func(), error) {
	var ln net.Listener
	var err error
	switch {
	case addr == "" && dir == "":
		return func() {}, nil
	case addr == "":
		addr = filepath.Join(dir, "admin.sock")
		fallthrough
	case strings.Contains(addr, "/"):
		if ln, err = listenUnixPrivate(addr); err != nil {
			return nil, fmt.Errorf("admin socket: %w", err)
		}
	default:
		ap, perr := netip.ParseAddrPort(addr)
		if perr != nil || !ap.Addr().IsLoopback() {
			return nil, fmt.Errorf("--admin %q: want a loopback IP:port or a unix socket path", addr)
		}
		if ln, err = net.Listen("tcp", addr); err != nil {
			return nil, fmt.Errorf("admin: %w", err)
		}
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	log.Info("admin API", "addr", ln.Addr().String())
	return func() {
		srv.Close()
		<-done
	}, nil
}

// serveUAPI serves the read-only WireGuard UAPI on nameOrPath: a name
// becomes /var/run/wireguard/NAME.sock, where wireguard-tools look. It
// returns a function that stops it.
func serveUAPI(serve func(net.Listener) error, nameOrPath string, log *slog.Logger) (func(), error) {
	if nameOrPath == "" {
		return func() {}, nil
	}
	path := nameOrPath
	if !strings.Contains(path, "/") {
		dir := "/var/run/wireguard"
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("--uapi %s: %w (give a socket path instead of a name to put it elsewhere)", nameOrPath, err)
		}
		path = filepath.Join(dir, nameOrPath+".sock")
	}
	ln, err := listenUnixPrivate(path)
	if err != nil {
		return nil, fmt.Errorf("--uapi: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := serve(ln); err != nil {
			log.Error("uapi", "err", err)
		}
	}()
	log.Info("WireGuard UAPI (read only)", "socket", path)
	return func() {
		ln.Close()
		<-done
		os.Remove(path)
	}, nil
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

// parseUpstreams accepts "ip[:port],..." (port 53 by default) given to
// flag name.
func parseUpstreams(name, s string) ([]string, error) {
	return parseServers(name, s, false)
}

// parseServers is parseUpstreams; with encrypted set it also takes
// tls:// and https:// upstreams, which connector.New checks.
func parseServers(name, s string, encrypted bool) ([]string, error) {
	var out []string
	for _, u := range strings.Split(s, ",") {
		u = strings.TrimSpace(u)
		if u == "" {
			continue
		}
		if encrypted && strings.Contains(u, "://") {
			if err := upstream.Check(u); err != nil {
				return nil, fmt.Errorf("--%s: %w", name, err)
			}
			out = append(out, u)
			continue
		}
		if ap, err := netip.ParseAddrPort(u); err == nil {
			out = append(out, ap.String())
			continue
		}
		a, err := netip.ParseAddr(strings.Trim(u, "[]"))
		if err != nil {
			want := "ip or ip:port"
			if encrypted {
				want = "ip, ip:port, tls://host[:port] or https://host[:port]/path"
			}
			return nil, fmt.Errorf("--%s %q: want %s", name, u, want)
		}
		out = append(out, netip.AddrPortFrom(a, 53).String())
	}
	return out, nil
}

// parseTags accepts "tag:a,tag:b".
func parseTags(s string) ([]string, error) {
	var out []string
	for _, t := range strings.Split(s, ",") {
		t = strings.TrimSpace(t)
		if t == "" {
			continue
		}
		if !strings.HasPrefix(t, "tag:") || len(t) == len("tag:") {
			return nil, fmt.Errorf("--tags: %q is not a tag (want tag:name)", t)
		}
		out = append(out, t)
	}
	if len(out) == 0 {
		return nil, errors.New("--tags: no tags")
	}
	return out, nil
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
// fdReserve is how many file descriptors the flow caps leave for
// everything else the process opens: a UDP socket for each of the up to
// 512 DNS questions resolved at once, the admin API's and UAPI's
// connections, state files, listeners and the runtime's own.
const fdReserve = 640

// flowCaps sizes the forwarding caps to the process's descriptor limit
// (Go raises the soft limit to the hard one at start): every open flow and
// every dial in progress holds a host socket, and a peer that could open
// flows until descriptors run out would make every other peer's flows, DNS
// and the admin API fail. A peer may hold a quarter of the flows, as with
// the defaults.
func flowCaps(log *slog.Logger) netstack.Config {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		log.Warn("cannot read the descriptor limit; the flow caps are the defaults", "err", err)
		return netstack.Config{}
	}
	budget := int(min(rl.Cur, 1<<30)) - fdReserve - int(min(rl.Cur, 1<<30))/16
	caps := netstack.Config{
		MaxFlows: max(min(netstack.DefaultMaxFlows, budget), 16),
	}
	caps.MaxFlowsPerPeer = max(min(netstack.DefaultMaxFlowsPerPeer, caps.MaxFlows/4), 4)
	caps.MaxInFlightDials = max(min(netstack.DefaultMaxInFlightDials, caps.MaxFlows/4), 4)
	caps.MaxInFlightDialsPerPeer = max(min(netstack.DefaultMaxInFlightDialsPerPeer, caps.MaxFlowsPerPeer/4), 1)
	level := slog.LevelInfo
	if budget < 1024 {
		level = slog.LevelWarn // a low limit: say what it costs
	}
	log.Log(context.Background(), level, "flow caps from the descriptor limit", "nofile", rl.Cur, "flows", caps.MaxFlows,
		"flows_per_peer", caps.MaxFlowsPerPeer, "dials", caps.MaxInFlightDials, "dials_per_peer", caps.MaxInFlightDialsPerPeer)
	return caps
}

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

// listenUnixPrivate listens on a unix socket at path that only this user
// can connect to. A socket left at path by an earlier run is replaced, but
// only if nothing answers on it; any other file there is an error.
func listenUnixPrivate(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s is in use by a running process", path)
		}
		os.Remove(path)
	}
	// The socket is created with the process umask; make it private from
	// the start, not after a chmod that leaves a window.
	old := syscall.Umask(0o077)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	return ln, err
}

// newLogger logs text to w at the --log-level named level.
func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// negativeIfZero turns a flag's 0 ("none") into the Config's negative
// value for none, where the Config's zero means its default.
func negativeIfZero(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// checkLifetimes checks the learned routes' lifetime flags.
func checkLifetimes(f upFlags) error {
	switch {
	case f.routeTTLMax <= 0:
		return fmt.Errorf("--route-ttl-max %v: want a positive duration", f.routeTTLMax)
	case f.routeTTLMin < 0:
		return fmt.Errorf("--route-ttl-min %v: want 0 or a positive duration", f.routeTTLMin)
	case f.routeTTLMin > f.routeTTLMax:
		return fmt.Errorf("--route-ttl-min %v is longer than --route-ttl-max %v", f.routeTTLMin, f.routeTTLMax)
	case f.routeGrace < 0:
		return fmt.Errorf("--route-grace %v: want 0 or a positive duration", f.routeGrace)
	}
	return nil
}

// loadRoots returns the system's roots plus the CA certificates of a PEM
// file.
func loadRoots(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--dns-upstream-ca: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--dns-upstream-ca %s: no PEM certificate in it", path)
	}
	return pool, nil
}
