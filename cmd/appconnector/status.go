package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/appconnector/appconnector/connector/client"
	"github.com/appconnector/appconnector/connector/client/clientadmin"
	"github.com/appconnector/appconnector/connector/proxy"
)

// statusFlags are the flags of `appconnector status`.
type statusFlags struct {
	admin           string
	asJSON, healthz bool
}

// statusFlagSet is the flag set of `appconnector status`, filling f.
func statusFlagSet(f *statusFlags, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("appconnector status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.admin, "admin", "", "the admin `address` of a client (`appconnector client --admin`) or, with --healthz, of a connector: loopback IP:port or unix socket path (required)")
	fs.BoolVar(&f.asJSON, "json", false, "print the status as the API gives it (JSON)")
	fs.BoolVar(&f.healthz, "healthz", false, "only ask /healthz: print its answer, exit 0 if healthy, 1 if not (a container probe; it needs no shell)")
	return fs
}

// status prints a running client sidecar's /v1/status for a person, or
// with --healthz a client's or a connector's health.
func status(args []string, stdout, stderr io.Writer) int {
	var f statusFlags
	fs := statusFlagSet(&f, stderr)
	admin, asJSON := &f.admin, &f.asJSON
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "appconnector status: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *admin == "" {
		fmt.Fprintln(stderr, "appconnector status: --admin is required: the address the client serves its admin API on")
		return 2
	}
	hc, base, err := adminClient(*admin, "")
	if err != nil {
		fmt.Fprintf(stderr, "appconnector status: %v\n", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if f.healthz {
		var body string
		if err := call(ctx, hc, "GET", base+"/healthz", &body); err != nil {
			fmt.Fprintf(stderr, "appconnector status: unhealthy: %v\n", err)
			return 1
		}
		io.WriteString(stdout, body)
		return 0
	}
	if *asJSON {
		var raw string
		if err := call(ctx, hc, "GET", base+"/v1/status", &raw); err != nil {
			fmt.Fprintf(stderr, "appconnector status: %v\n", err)
			return 1
		}
		io.WriteString(stdout, raw)
		return 0
	}
	var st clientadmin.Status
	if err := call(ctx, hc, "GET", base+"/v1/status", &st); err != nil {
		fmt.Fprintf(stderr, "appconnector status: %v\n", err)
		return 1
	}
	printStatus(stdout, st, time.Now())
	return 0
}

// printStatus writes st as tables: connectors, routes, DNS, proxies.
func printStatus(w io.Writer, st clientadmin.Status, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "CONNECTOR\tTUNNEL\tENDPOINT\tSTATE\tRTT\tHANDSHAKE\tFLOWS\tFAILOVERS\tROUTES")
	for _, cs := range st.Connectors {
		rtt := "-"
		if cs.RTT > 0 && cs.State != client.StateDown {
			rtt = cs.RTT.Round(10 * time.Microsecond).String()
		}
		hs := "never"
		if !cs.LastHandshake.IsZero() {
			hs = now.Sub(cs.LastHandshake).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%v\t%s\t%s\t%s\t%s\t%d open, %d total\t%d\t%d\n",
			cs.PublicKey, cs.Tunnel, cs.Endpoint, cs.State, rtt, hs, cs.FlowsOpen, cs.FlowsTotal, cs.Failovers, cs.Routes)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nroutes: version %d, %d prefixes", st.Routes.Version, len(st.Routes.Prefixes))
	if len(st.Routes.Domains) > 0 {
		fmt.Fprintf(w, "; domains %s", strings.Join(st.Routes.Domains, ", "))
	}
	fmt.Fprintln(w)

	var dns []string
	for _, d := range st.DNS {
		if d.Questions > 0 {
			dns = append(dns, fmt.Sprintf("%s %s %d", d.Route, d.Result, d.Questions))
		}
	}
	if len(dns) == 0 {
		dns = []string{"no questions yet"}
	}
	fmt.Fprintf(w, "dns: %s\n", strings.Join(dns, ", "))
	if fl := st.FlowLog; fl != nil {
		fmt.Fprintf(w, "flow log: %d lines written, %d dropped, %d write errors\n", fl.Written, fl.Dropped, fl.Errors)
	}

	for _, p := range st.Proxies {
		line := fmt.Sprintf("proxy %s: %d connections (%d open)", p.Name, p.Conns, p.Open)
		var refused []string
		for _, reason := range proxy.RefusalNames {
			if n := p.Refused[reason]; n > 0 {
				refused = append(refused, fmt.Sprintf("%s %d", reason, n))
			}
		}
		if len(refused) > 0 {
			line += "; refused: " + strings.Join(refused, ", ")
		}
		if p.AuthFailures > 0 {
			line += fmt.Sprintf("; failed authentications %d", p.AuthFailures)
		}
		fmt.Fprintln(w, line)
	}
}
