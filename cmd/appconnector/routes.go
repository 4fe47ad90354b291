package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/appconnector/appconnector/connector/apptype"
)

// routes talks to a running connector's admin API.
func routes(args []string, stdout, stderr io.Writer) int {
	approve := len(args) > 0 && args[0] == "approve"
	if approve {
		args = args[1:]
	}
	name := "appconnector routes"
	if approve {
		name += " approve"
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	state := fs.String("state", "", "state `directory` of the connector, whose admin.sock to use (default: as for up)")
	admin := fs.String("admin", "", "admin API `address` (loopback IP:port or unix socket path), if up was given --admin")
	asJSON := fs.Bool("json", false, "print the routes as JSON")
	format := fs.String("format", "table", "output `format`: table, or allowed-ips (one AllowedIPs line for stock WireGuard clients)")
	all := fs.Bool("all", false, "with approve: approve every pending route")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	client, base, err := adminClient(*admin, *state)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	if approve {
		q := url.Values{}
		switch {
		case *all && fs.NArg() == 0:
			q.Set("all", "1")
		case !*all && fs.NArg() == 1:
			q.Set("prefix", fs.Arg(0))
		default:
			fmt.Fprintf(stderr, "%s: give one PREFIX or --all\n", name)
			return 2
		}
		var res struct{ Approved int }
		if err := call(ctx, client, "POST", base+"/v1/routes/approve?"+q.Encode(), &res); err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", name, err)
			return 1
		}
		fmt.Fprintf(stdout, "approved %d route(s)\n", res.Approved)
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q\n", name, fs.Arg(0))
		return 2
	}
	switch *format {
	case "allowed-ips":
		var line string
		if err := call(ctx, client, "GET", base+"/v1/routes?format=allowed-ips", &line); err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", name, err)
			return 1
		}
		fmt.Fprint(stdout, line)
		return 0
	case "table":
	default:
		fmt.Fprintf(stderr, "%s: --format %q: want table or allowed-ips\n", name, *format)
		return 2
	}
	var table struct {
		Version uint64          `json:"version"`
		Routes  []apptype.Route `json:"routes"`
	}
	if err := call(ctx, client, "GET", base+"/v1/routes", &table); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(table)
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PREFIX\tAPP\tDOMAIN\tSOURCE\tSTATE\tFIRST SEEN\tLAST SEEN\tEXPIRES")
	for _, r := range table.Routes {
		expires := when(r.Expires)
		if r.InUse {
			expires = "in use"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Prefix, r.App, dash(r.Domain), r.Source, r.State, when(r.FirstSeen), when(r.LastSeen), expires)
	}
	tw.Flush()
	return 0
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format(time.DateTime)
}

// adminClient returns an HTTP client and base URL for the admin API.
func adminClient(admin, state string) (*http.Client, string, error) {
	if admin != "" && !strings.Contains(admin, "/") {
		return &http.Client{}, "http://" + admin, nil
	}
	sock := admin
	if sock == "" {
		dir := state
		if dir == "" {
			var err error
			if dir, err = defaultStateDir(); err != nil {
				return nil, "", err
			}
		}
		sock = filepath.Join(dir, "admin.sock")
	}
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", sock)
		if err != nil {
			return nil, fmt.Errorf("is it running? %w", err)
		}
		if err := checkSocketPeer(c, sock); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}}
	return &http.Client{Transport: tr}, "http://admin", nil
}

// checkSocketPeer makes sure the process serving the unix socket c (at
// path) runs as this user, as root, or as the owner of the private
// directory the socket is in: anyone else could have put a fake admin API
// there, and `routes approve` would then approve what it says.
func checkSocketPeer(c net.Conn, path string) error {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return fmt.Errorf("admin socket %s: %w", path, err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return fmt.Errorf("admin socket %s: %w", path, err)
	}
	if cerr != nil {
		return fmt.Errorf("admin socket %s: who serves it: %w", path, cerr)
	}
	if uid := uint32(os.Geteuid()); cred.Uid != uid && cred.Uid != 0 && !ownsPrivateDir(cred.Uid, path) {
		return fmt.Errorf("admin socket %s is served by uid %d (pid %d), not by you (uid %d), root, or the owner of a directory only they may write: "+
			"refusing to talk to it; run this command as the user the connector runs as", path, cred.Uid, cred.Pid, uid)
	}
	return nil
}

// ownsPrivateDir reports whether uid owns the socket at path and the
// directory it is in, which no one else may write: then only uid (or
// root) could have put a server there. Root running the CLI against a
// connector that runs as nobody relies on it.
func ownsPrivateDir(uid uint32, path string) bool {
	var sock, dir unix.Stat_t
	if unix.Lstat(path, &sock) != nil || unix.Stat(filepath.Dir(path), &dir) != nil {
		return false
	}
	return sock.Uid == uid && dir.Uid == uid && dir.Mode&0o022 == 0
}

// call does one request; a JSON body is decoded into v, a text body into
// *string.
func call(ctx context.Context, c *http.Client, method, u string, v any) error {
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	if s, ok := v.(*string); ok {
		*s = string(body)
		return nil
	}
	return json.Unmarshal(body, v)
}
