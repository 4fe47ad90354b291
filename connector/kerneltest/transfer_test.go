package kerneltest

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/appconnector/appconnector/netstack/netstacktest"
)

const (
	// uploadSize is the size of every bulk transfer, each way.
	uploadSize = 32 << 20
	// transferTimeout bounds one bulk transfer; so does curl's speed
	// limit: below speedLimit bytes/s for speedTime, it gives up.
	transferTimeout = 30 * time.Second
	speedLimit      = 100_000
	speedTime       = 5 * time.Second
	// stallFactor: a transfer that takes more than this many times the
	// median of its series stalled.
	stallFactor = 4
	// maxFailures: after this many timeouts or errors, a path's series
	// stops (it has failed anyway; the rest would only take time).
	maxFailures = 3
	// seriesBudget: no new transfer of a series starts after this long
	// (at the default counts a series takes about 1.5 min on a loaded
	// 2-core machine).
	seriesBudget = 4 * time.Minute
)

// direction of a bulk transfer, seen from the client.
type direction int

const (
	download direction = iota
	upload
)

func (d direction) String() string { return [...]string{"down", "up"}[d] }

// result is one bulk transfer.
type result struct {
	took     time.Duration // curl's time_total
	bytes    int64         // transferred, the whole uploadSize unless it failed
	timedOut bool          // curl gave up: --max-time or the speed limit
	err      error         // any other failure
}

// mbps is the transfer's rate in MB/s (10^6 bytes).
func (x result) mbps() float64 {
	if x.took <= 0 {
		return 0
	}
	return float64(x.bytes) / x.took.Seconds() / 1e6
}

func (x result) String() string {
	s := fmt.Sprintf("%.2fs, %.1f of %.1f MB (%.1f MB/s)", x.took.Seconds(), float64(x.bytes)/1e6, float64(uploadSize)/1e6, x.mbps())
	switch {
	case x.timedOut:
		s += ", timed out"
	case x.err != nil:
		s += ", " + x.err.Error()
	}
	return s
}

// transfer moves uploadSize bytes on a new connection on path p over f,
// in direction d, with the client's curl.
func (r *rig) transfer(p path, f family, d direction) result {
	args := []string{"curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{size_upload} %{time_total}",
		"--max-time", strconv.Itoa(int(transferTimeout.Seconds())),
		"--speed-limit", strconv.Itoa(speedLimit), "--speed-time", strconv.Itoa(int(speedTime.Seconds())),
		"-H", "Expect:"}
	url := hostURL(p, f)
	if d == download {
		url += "/down?n=" + strconv.Itoa(uploadSize)
	} else {
		url += "/up"
		args = append(args, "-T", r.upload)
	}
	args = append(args, url)
	ctx, cancel := context.WithTimeout(context.Background(), transferTimeout+10*time.Second)
	defer cancel()
	cmd := command(ctx, nsExec(r.cli, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var x result
	var code int
	var down, up, secs float64
	if _, perr := fmt.Sscanf(string(out), "%d %g %g %g", &code, &down, &up, &secs); perr != nil && err == nil {
		err = fmt.Errorf("curl output %q: %w", out, perr)
	}
	x.took = time.Duration(secs * float64(time.Second))
	x.bytes = int64(down)
	if d == upload {
		x.bytes = int64(up)
	}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit) && exit.ExitCode() == 28:
		x.timedOut = true
	case err != nil:
		x.err = fmt.Errorf("curl %s %s: %w: %s", d, url, err, strings.TrimSpace(stderr.String()))
	case code != 200:
		x.err = fmt.Errorf("curl %s %s: HTTP status %d", d, url, code)
	case x.bytes != uploadSize:
		x.err = fmt.Errorf("curl %s %s: %d bytes, want %d", d, url, x.bytes, uploadSize)
	}
	return x
}

// series is one path's transfers of one kind (family, direction, loss).
type series struct {
	name    string
	runs    []result
	stopped string // why it stopped before its count, if it did
}

// failures is the count of timeouts and errors.
func (s *series) failures() int {
	n := 0
	for _, x := range s.runs {
		if x.timedOut || x.err != nil {
			n++
		}
	}
	return n
}

// median is the median time of the runs, timed-out ones at the time they
// gave up.
func (s *series) median() time.Duration {
	if len(s.runs) == 0 {
		return 0
	}
	ts := make([]time.Duration, len(s.runs))
	for i, x := range s.runs {
		ts[i] = x.took
	}
	slices.Sort(ts)
	if n := len(ts); n%2 == 0 {
		return (ts[n/2-1] + ts[n/2]) / 2
	}
	return ts[len(ts)/2]
}

// stalls are the indexes of the runs that stalled: timed out, or took
// more than stallFactor times the median.
func (s *series) stalls() []int {
	med := s.median()
	var out []int
	for i, x := range s.runs {
		if x.timedOut || (x.err == nil && x.took > stallFactor*med) {
			out = append(out, i)
		}
	}
	return out
}

// errs are the indexes of runs that failed other than by timing out.
func (s *series) errs() []int {
	var out []int
	for i, x := range s.runs {
		if x.err != nil {
			out = append(out, i)
		}
	}
	return out
}

// medianMBps and minMBps are the rates of the median and the slowest run.
func (s *series) medianMBps() float64 {
	if m := s.median(); m > 0 {
		return uploadSize / m.Seconds() / 1e6
	}
	return 0
}

func (s *series) minMBps() float64 {
	if len(s.runs) == 0 {
		return 0
	}
	lo := s.runs[0].mbps()
	for _, x := range s.runs[1:] {
		lo = min(lo, x.mbps())
	}
	return lo
}

func (s *series) maxTime() time.Duration {
	var hi time.Duration
	for _, x := range s.runs {
		hi = max(hi, x.took)
	}
	return hi
}

// summary is the series' one line: count, median and min MB/s, max time,
// stalls.
func (s *series) summary() string {
	line := fmt.Sprintf("%-24s %3d runs  median %6.1f MB/s  min %6.1f MB/s  max time %6.2fs  stalls %d  errors %d",
		s.name, len(s.runs), s.medianMBps(), s.minMBps(), s.maxTime().Seconds(), len(s.stalls()), len(s.errs()))
	if s.stopped != "" {
		line += "  (stopped: " + s.stopped + ")"
	}
	return line
}

// describe lists runs idx, for a failure message.
func (s *series) describe(idx []int) string {
	var b strings.Builder
	for _, i := range idx {
		fmt.Fprintf(&b, "\n\t%s run %d: %v", s.name, i+1, s.runs[i])
	}
	return b.String()
}

// runPair runs nConn transfers through the connector and nRef through the
// reference, interleaved evenly so both see the same machine load. A
// path's series stops after maxFailures failures; both stop at
// budget.
func (r *rig) runPair(f family, d direction, loss, nConn, nRef int, budget time.Duration) (conn, ref *series) {
	name := func(p path) string { return fmt.Sprintf("%v %v %v %d%%", p, f, d, loss) }
	conn, ref = &series{name: name(viaConnector)}, &series{name: name(viaReference)}
	type slot struct {
		at float64
		p  path
	}
	var plan []slot
	for i := range nConn {
		plan = append(plan, slot{(float64(i) + 0.5) / float64(nConn), viaConnector})
	}
	for i := range nRef {
		plan = append(plan, slot{(float64(i) + 0.5) / float64(nRef), viaReference})
	}
	slices.SortStableFunc(plan, func(a, b slot) int {
		switch {
		case a.at < b.at:
			return -1
		case a.at > b.at:
			return 1
		}
		return int(a.p) - int(b.p)
	})
	start := time.Now()
	for _, sl := range plan {
		s := conn
		if sl.p == viaReference {
			s = ref
		}
		if s.stopped != "" {
			continue
		}
		if time.Since(start) > budget {
			for _, s := range []*series{conn, ref} {
				if s.stopped == "" {
					s.stopped = fmt.Sprintf("time budget %v spent", budget.Round(time.Second))
				}
			}
			break
		}
		s.runs = append(s.runs, r.transfer(sl.p, f, d))
		if s.failures() >= maxFailures {
			s.stopped = fmt.Sprintf("%d failures", maxFailures)
		}
	}
	return conn, ref
}

// deadlineMargin is the time kept back from the test binary's deadline
// (go test -timeout) for the cleanups: a test killed by the timeout
// leaves its namespaces to the next run.
const deadlineMargin = time.Minute

// budget is the time one of the seriesLeft series still to run may take:
// seriesBudget, or less so that all of them end before the test binary's
// deadline. At the default counts the whole test takes about 9 minutes
// on a loaded 2-core machine, close to go test's default timeout of 10.
func budget(t *testing.T, seriesLeft int) time.Duration {
	b := time.Duration(seriesBudget)
	if dl, ok := t.Deadline(); ok && seriesLeft > 0 {
		b = min(b, (time.Until(dl)-deadlineMargin)/time.Duration(seriesLeft))
	}
	return max(b, 0)
}

// row is one line of the comparison table.
type row struct {
	loss      int
	f         family
	d         direction
	conn, ref *series
}

// TestKernelThroughput: a stock Linux client downloads and uploads 32 MiB
// on new connections through the connector, over IPv4 and IPv6, with no
// added loss and with 1% loss each way, alternating with the same
// transfers through the reference gateway. No transfer through the
// connector may stall or fail, except a few downloads at 1% loss (a known
// open problem, see measure); the rates are only reported.
func TestKernelThroughput(t *testing.T) {
	netstacktest.CheckLeaks(t)
	r := newRig(t)
	plans := []struct{ loss, conn, ref int }{
		{0, scaled(t, 50, 3), scaled(t, 10, 3)},
		{1, scaled(t, 20, 3), scaled(t, 20, 3)},
	}
	var rows []row
	for _, pl := range plans {
		for _, f := range []family{v4, v6} {
			for _, d := range []direction{download, upload} {
				t.Run(fmt.Sprintf("loss%d/%v/%v", pl.loss, f, d), func(t *testing.T) {
					r.t = t // the rig's helpers fail this subtest
					conn, ref := r.measure(t, f, d, pl.loss, pl.conn, pl.ref, budget(t, 4*len(plans)-len(rows)))
					rows = append(rows, row{pl.loss, f, d, conn, ref})
				})
			}
		}
	}
	r.t = t
	t.Log("kernel client through the connector vs the reference gateway (MB/s = 10^6 bytes/s; " +
		"a stall takes over 4× its series' median or times out):\n" + table(rows))
}

// measure runs one pair of series at loss% and judges them: t fails on
// any stall or error of the connector, and on errors of the reference
// (then the rig itself is broken); a stall of the reference is logged.
func (r *rig) measure(t *testing.T, f family, d direction, loss, nConn, nRef int, budget time.Duration) (conn, ref *series) {
	r.setLoss(loss)
	m0, merr := r.metrics()
	var drops0 [2]int64
	var dropsErr error
	for p := range drops0 {
		if drops0[p], dropsErr = r.socketDrops(path(p)); dropsErr != nil {
			break
		}
	}
	conn, ref = r.runPair(f, d, loss, nConn, nRef, budget)
	t.Log(conn.summary())
	t.Log(ref.summary())

	// What else happened: the loss the rule really applied to each
	// tunnel, the datagrams the client's sockets dropped (full receive
	// buffers), the connector's retransmissions.
	var diag []string
	if c, err := r.lossCounts(); err != nil {
		diag = append(diag, err.Error())
	} else {
		for _, p := range []string{"conn", "ref"} {
			for _, dir := range []string{"out", "in"} {
				k := p + "_" + dir
				diag = append(diag, fmt.Sprintf("%s dropped %d/%d (%.2f%%)", k, c[k+"_drop"], c[k], 100*float64(c[k+"_drop"])/float64(max(c[k], 1))))
			}
		}
	}
	for p := range drops0 {
		if d, err := r.socketDrops(path(p)); err == nil && dropsErr == nil {
			diag = append(diag, fmt.Sprintf("client %v tunnel's socket dropped %d", path(p), d-drops0[p]))
		}
	}
	if m1, err := r.metrics(); err == nil && merr == nil {
		for _, k := range []string{"appconnector_tcp_retransmission_timeouts_total", "appconnector_tcp_retransmitted_segments_total",
			"appconnector_tcp_loss_recoveries_total", "appconnector_tcp_dupack_windows_held_total"} {
			diag = append(diag, fmt.Sprintf("%s +%.0f", strings.TrimPrefix(k, "appconnector_"), m1[k]-m0[k]))
		}
		// A Linux receiver grows its window in the duplicate ACKs that
		// follow a loss; unless the connector holds their window, its
		// gVisor senders do not count them and find every such loss by
		// the timer (netstack/dupack.go). Downloads at loss must show
		// the hold at work.
		const held = "appconnector_tcp_dupack_windows_held_total"
		if loss > 0 && d == download && len(conn.runs) > 0 && m1[held]-m0[held] <= 0 {
			t.Errorf("%d downloads at %d%% loss: %s did not rise: the Linux client's duplicate ACKs reached the senders with their grown windows",
				len(conn.runs), loss, held)
		}
	}
	t.Log(strings.Join(diag, "; "))

	if st := conn.stalls(); len(st) > 0 {
		// Known open (issue 10, bench/RESULTS.md entry 5): with 1% loss,
		// about one download in 20-40 through the connector still stalls
		// (gVisor's sender finds some losses only by its timer). Until
		// that is fixed such a series may have a few, logged as known; more
		// than max(2, 1 in 10) is a regression and fails, as does any stall
		// of any other series.
		if known := max(2, len(conn.runs)/10); loss > 0 && d == download && len(st) <= known {
			t.Logf("KNOWN OPEN (issue 10): %d of %d downloads through the connector stalled at %d%% loss (median %.2fs; up to %d tolerated):%s",
				len(st), len(conn.runs), loss, conn.median().Seconds(), known, conn.describe(st))
		} else {
			t.Errorf("%d of %d transfers through the connector stalled (median %.2fs):%s", len(st), len(conn.runs), conn.median().Seconds(), conn.describe(st))
		}
	}
	if e := conn.errs(); len(e) > 0 {
		t.Errorf("%d of %d transfers through the connector failed:%s", len(e), len(conn.runs), conn.describe(e))
	}
	// A series stopped by its failures failed above; one stopped by its
	// time budget ran on a machine too slow for its counts, which is
	// logged in its summary line but not the connector's failure.
	if st := ref.stalls(); len(st) > 0 {
		t.Logf("NOTE: %d of %d transfers through the reference gateway stalled (median %.2fs); not a failure of the connector, "+
			"but the machine may be too loaded for the comparison to mean much:%s", len(st), len(ref.runs), ref.median().Seconds(), ref.describe(st))
	}
	if e := ref.errs(); len(e) > 0 {
		t.Errorf("%d of %d transfers through the reference gateway failed: the rig is broken:%s", len(e), len(ref.runs), ref.describe(e))
	}
	return conn, ref
}

// table formats rows: connector and reference side by side.
func table(rows []row) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-5s %-3s %-5s | %-38s | %-38s | %s\n", "loss", "ip", "way", "connector: runs median min stalls", "reference: runs median min stalls", "conn/ref median")
	for _, rw := range rows {
		cell := func(s *series) string {
			return fmt.Sprintf("%4d %7.1f MB/s %7.1f MB/s %3d", len(s.runs), s.medianMBps(), s.minMBps(), len(s.stalls()))
		}
		ratio := 0.0
		if m := rw.ref.medianMBps(); m > 0 {
			ratio = rw.conn.medianMBps() / m
		}
		fmt.Fprintf(&b, "%-5s %-3v %-5v | %-38s | %-38s | %.2f\n", strconv.Itoa(rw.loss)+"%", rw.f, rw.d, cell(rw.conn), cell(rw.ref), ratio)
	}
	return b.String()
}
