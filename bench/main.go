package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/appconnector/appconnector/connector/dnszone"
)

// workload names, in the order they run within a scenario.
var allWorkloads = []string{"bulk-up", "bulk-down", "rtt", "conns-1", "conns-32", "dns", "idle"}

var allScenarios = []string{"direct", "stock", "stock-inproc", "kernel", "connector", "socks5", "limit"}

type options struct {
	duration    time.Duration
	runs        int
	scenarios   []string
	workloads   []string
	idleFlows   int
	dnsNames    int
	rttMax      int
	out         string
	quick       bool
	validate    string
	role, dir   string
	dnsUpstream string
}

func main() {
	var o options
	var scen, work string
	flag.DurationVar(&o.duration, "duration", time.Second, "length of each timed measurement (bulk, rtt, connection rate)")
	flag.IntVar(&o.runs, "runs", 5, "runs; every figure is the median of the runs (min–max shown); a run far worse than its median is reported as a stall")
	flag.StringVar(&scen, "scenarios", strings.Join(allScenarios, ","), "scenarios to run, comma-separated")
	flag.StringVar(&work, "workloads", strings.Join(allWorkloads, ","), "workloads to run, comma-separated")
	flag.IntVar(&o.idleFlows, "idle-flows", 10000, "idle TCP flows held for the memory figure")
	flag.IntVar(&o.dnsNames, "dns-names", 1000, "new names asked per run for the DNS figures")
	flag.IntVar(&o.rttMax, "rtt-max", 20000, "most round trips per RTT measurement")
	flag.StringVar(&o.out, "out", "bench-results", "output `directory` for results.json, results.md and results.svg")
	flag.BoolVar(&o.quick, "quick", false, "a fast smoke run: 1 run (unless -runs is given), 200 ms measurements, 300 idle flows, 100 names")
	flag.StringVar(&o.validate, "validate", "", "check that `directory` holds a well-formed report, and exit")
	flag.StringVar(&o.role, "role", "", "internal: run as the connector or client process")
	flag.StringVar(&o.dir, "dir", "", "internal: the role's configuration directory")
	flag.StringVar(&o.dnsUpstream, "dns-upstream", "", "internal: the role's DNS upstream")
	flag.Parse()

	if o.role != "" {
		if err := runRole(o.role, o.dir, o.dnsUpstream); err != nil {
			fmt.Fprintf(os.Stderr, "bench %s: %v\n", o.role, err)
			os.Exit(1)
		}
		return
	}
	if o.validate != "" {
		if err := Validate(o.validate); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
			os.Exit(1)
		}
		fmt.Printf("%s: well formed, no stalled runs\n", o.validate)
		return
	}
	// BENCH_CPUPROFILE=prefix also profiles this process (the harness, and
	// the test client of the connector scenario) to prefix-harness.pprof.
	if prefix := os.Getenv("BENCH_CPUPROFILE"); prefix != "" {
		f, err := os.Create(prefix + "-harness.pprof")
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
			os.Exit(1)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	if o.quick {
		// One run cannot show a stall (its median is itself): -quick
		// -runs 3 is a quick look at the tail.
		runsGiven := false
		flag.Visit(func(f *flag.Flag) { runsGiven = runsGiven || f.Name == "runs" })
		if !runsGiven {
			o.runs = 1
		}
		o.duration, o.idleFlows, o.dnsNames = 200*time.Millisecond, 300, 100
	}
	o.scenarios = splitList(scen)
	o.workloads = splitList(work)
	for _, s := range o.scenarios {
		if !slices.Contains(allScenarios, s) {
			fmt.Fprintf(os.Stderr, "bench: unknown scenario %q (have %s)\n", s, strings.Join(allScenarios, ", "))
			os.Exit(2)
		}
	}
	for _, w := range o.workloads {
		if !slices.Contains(allWorkloads, w) {
			fmt.Fprintf(os.Stderr, "bench: unknown workload %q (have %s)\n", w, strings.Join(allWorkloads, ", "))
			os.Exit(2)
		}
	}
	raiseFileLimit()
	if err := run(o); err != nil {
		pprof.StopCPUProfile() // os.Exit skips the deferred flush
		fmt.Fprintf(os.Stderr, "\nbench: %v\n", err)
		os.Exit(1)
	}
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// run sets up every scenario, runs the workloads interleaved (run 1 of
// every scenario, then run 2, ...) so that drift in the machine's speed
// spreads over all of them, and writes the report.
func run(o options) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "appconnector-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	host, err := startServers(func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") })
	if err != nil {
		return err
	}
	defer host.stop()
	names, records := benchZone(o.runs * o.dnsNames)
	dns, err := dnszone.Start(records...)
	if err != nil {
		return err
	}
	defer dns.Close()
	s := &setup{host: host, dns: dns, dnsNames: names, dir: dir, self: self}

	var scs []*scenario
	defer func() {
		for _, sc := range scs {
			sc.close()
		}
	}()
	for _, name := range o.scenarios {
		progress("setting up %s", name)
		sc, err := map[string]func(*setup) (*scenario, error){
			"direct": directScenario, "stock": stockScenario, "connector": connectorScenario, "socks5": socks5Scenario,
			"stock-inproc": stockInprocScenario, "kernel": kernelScenario, "limit": limitScenario,
		}[name](s)
		var skip errSkipped
		if errors.As(err, &skip) {
			fmt.Fprintf(os.Stderr, "\n%s: %v\n", name, err)
			o.scenarios = slices.DeleteFunc(slices.Clone(o.scenarios), func(s string) bool { return s == name })
			continue
		}
		if err != nil {
			return err
		}
		scs = append(scs, sc)
	}

	results := map[string]*Result{} // by scenario/metric/process
	var order []string
	record := func(sc *scenario, m measurement) {
		key := sc.name + "/" + m.metric + "/" + m.process
		r, ok := results[key]
		if !ok {
			r = &Result{Scenario: sc.name, Metric: m.metric, Unit: m.unit, Higher: m.higher, Process: m.process}
			results[key] = r
			order = append(order, key)
		}
		r.Samples = append(r.Samples, m.value)
	}
	// A smoke run judges no speed: it waits for a quiet machine briefly.
	quietMax := 3 * time.Second
	if o.quick {
		quietMax = 500 * time.Millisecond
	}
	start := time.Now()
	for runIdx := range o.runs {
		for _, sc := range scs {
			for _, w := range o.workloads {
				progress("run %d/%d  %-9s %-9s  (%s elapsed)", runIdx+1, o.runs, sc.name, w, time.Since(start).Round(time.Second))
				// The previous workload's processes may still be
				// winding down (closing 10,000 idle flows takes the
				// machine 0.7-1.8 s after the workload returns): without
				// this wait the next scenario's first figure paid for it.
				if _, quiet := waitQuiet(quietMax); !quiet {
					fmt.Fprintf(os.Stderr, "\n%s %s: the machine was still busy after %v; measuring anyway\n", sc.name, w, quietMax)
				}
				ms, err := runWorkload(o, s, sc, w, runIdx)
				if err != nil {
					return fmt.Errorf("%s %s: %w", sc.name, w, err)
				}
				for _, m := range ms {
					record(sc, m)
				}
			}
		}
	}
	progress("done in %s", time.Since(start).Round(time.Second))
	fmt.Fprintln(os.Stderr)

	rep := &Report{Meta: meta(o)}
	for _, key := range order {
		rep.Results = append(rep.Results, *results[key])
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	var md bytes.Buffer
	if err := rep.Markdown(&md, o.scenarios); err != nil {
		return err
	}
	os.Stdout.Write(md.Bytes())
	if err := rep.WriteMarkdown(filepath.Join(o.out, resultsMDFile), o.scenarios); err != nil {
		return err
	}
	if err := rep.WriteJSON(filepath.Join(o.out, resultsJSONFile)); err != nil {
		return err
	}
	if err := rep.WriteSVG(filepath.Join(o.out, resultsSVGFile), o.scenarios); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "wrote %s/results.{md,json,svg}\n", o.out)
	if stalls := rep.findStalls(); len(stalls) > 0 {
		fmt.Fprintf(os.Stderr, "bench: stalled runs: %d (listed under the table); -validate fails on them\n", len(stalls))
	}
	return nil
}

// runWorkload runs workload w once on sc.
func runWorkload(o options, s *setup, sc *scenario, w string, runIdx int) ([]measurement, error) {
	if sc.limit {
		if w != "bulk-up" && w != "bulk-down" {
			return nil, nil
		}
		n, d, err := cryptoLimit(o.duration)
		if err != nil {
			return nil, err
		}
		return []measurement{{metric: w, unit: "MB/s", higher: true, value: float64(n) / d.Seconds() / 1e6}}, nil
	}
	switch w {
	case "bulk-up", "bulk-down":
		cpu := cpuSince(sc)
		f := bulkUp
		if w == "bulk-down" {
			f = bulkDown
		}
		n, d, err := f(sc, o.duration)
		if err != nil {
			return nil, err
		}
		if n <= 0 || d <= 0 {
			return nil, fmt.Errorf("no data moved")
		}
		ms := []measurement{{metric: w, unit: "MB/s", higher: true, value: float64(n) / d.Seconds() / 1e6}}
		return append(ms, cpu("cpu-per-gib-"+strings.TrimPrefix(w, "bulk-"), "s/GiB", float64(n)/(1<<30))...), nil
	case "rtt":
		ds, err := rtt(sc, o.duration, o.rttMax)
		if err != nil {
			return nil, err
		}
		return []measurement{
			{metric: "rtt-p50", unit: "µs", value: float64(percentile(ds, 50).Nanoseconds()) / 1e3},
			{metric: "rtt-p99", unit: "µs", value: float64(percentile(ds, 99).Nanoseconds()) / 1e3},
		}, nil
	case "conns-1", "conns-32":
		p := 1
		if w == "conns-32" {
			p = 32
		}
		cpu := cpuSince(sc)
		r, done, failed, err := connRate(sc, o.duration, p)
		if err != nil {
			return nil, err
		}
		ms := []measurement{
			{metric: w, unit: "conns/s", higher: true, value: r},
			{metric: w + "-failed", unit: "conns", value: float64(failed)},
		}
		return append(ms, cpu("cpu-per-conn-"+strings.TrimPrefix(w, "conns-"), "µs", float64(done)/1e6)...), nil
	case "dns":
		if sc.resolve == nil {
			return nil, nil
		}
		names := s.dnsNames[runIdx*o.dnsNames : (runIdx+1)*o.dnsNames]
		cpu := cpuSince(sc)
		lat, rate, err := dnsLearn(sc, names, 8)
		if err != nil {
			return nil, err
		}
		ms := []measurement{
			{metric: "dns-learn-p50", unit: "µs", value: float64(percentile(lat, 50).Nanoseconds()) / 1e3},
			{metric: "dns-learn-rate", unit: "names/s", higher: true, value: rate},
		}
		return append(ms, cpu("cpu-per-name", "µs", float64(len(names))/1e6)...), nil
	case "idle":
		// The harness holds sockets of its own per flow (the client side
		// for direct and socks5, the server side for all but stock): stay
		// within the open-file limit.
		fdsPerFlow := map[string]int{"direct": 2, "stock": 0, "stock-inproc": 0, "kernel": 1, "connector": 1, "socks5": 2}[sc.name]
		n := o.idleFlows
		if fdsPerFlow > 0 {
			if limit := (fileLimit() - 2000) / fdsPerFlow; n > limit {
				fmt.Fprintf(os.Stderr, "\n%s idle: %d flows would exceed the open-file limit; holding %d\n", sc.name, n, limit)
				n = limit
			}
		}
		per, err := idleFlows(sc, n)
		if err != nil {
			return nil, err
		}
		var ms []measurement
		for _, name := range sortedKeys(per) {
			ms = append(ms, measurement{metric: "idle-rss-per-flow", unit: "KiB", value: max(per[name], 0), process: name})
		}
		return ms, nil
	}
	return nil, fmt.Errorf("unknown workload %q", w)
}

func meta(o options) Meta {
	m := Meta{
		Date: time.Now().UTC().Format(time.RFC3339), Command: strings.Join(os.Args, " "),
		GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH, NumCPU: runtime.NumCPU(),
		Runs: o.runs, Duration: o.duration.String(), Quick: o.quick, CPU: cpuModel(),
	}
	if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		m.Commit = strings.TrimSpace(string(out))
	}
	return m
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// progress rewrites the progress line on stderr.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "\r\033[K"+format, args...)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// raiseFileLimit lifts the open-file limit as far as allowed: the idle
// workload holds thousands of sockets.
func raiseFileLimit() {
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) != nil {
		return
	}
	want := max(lim.Max, 1<<16)
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}) != nil {
		lim.Cur = lim.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
}

// fileLimit is the current open-file limit.
func fileLimit() int {
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) != nil {
		return 1024
	}
	return int(min(lim.Cur, 1<<30))
}
