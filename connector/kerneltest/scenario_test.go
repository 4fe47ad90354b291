package kerneltest

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// recoveryBound is how long, after a restarted connector listens again,
// the stock client's first new connection may take to succeed. Without
// the connector's handshake to the peers it remembers, the client waits
// out its own rekey timers (~15 s).
const recoveryBound = 2 * time.Second

// TestKernelRestart: the connector is stopped (SIGTERM, as an operator
// would) and started again with the same state directory while the
// client's WireGuard session is in use; the client, which neither probes
// nor resets its session, opens a new connection within recoveryBound of
// the connector listening again. A few restarts, alternating the family.
func TestKernelRestart(t *testing.T) {
	netstacktest.CheckLeaks(t)
	r := newRig(t)
	for i := range 4 {
		f := family(i % 2)
		if _, err := r.small(viaConnector, f, 5*time.Second); err != nil {
			t.Fatalf("restart %d: before it: %v", i+1, err)
		}
		r.stopConnector()
		listening := r.startConnector()
		curlTook, err := r.small(viaConnector, f, 5*time.Second)
		took := time.Since(listening)
		if err != nil {
			t.Fatalf("restart %d: the first new connection over %v failed: %v\nconnector log:\n%s", i+1, f, err, r.connectorLog())
		}
		t.Logf("restart %d: the first new connection over %v succeeded %.3fs after the connector listened again (curl's own time %.3fs)",
			i+1, f, took.Seconds(), curlTook.Seconds())
		if took > recoveryBound {
			t.Errorf("restart %d: the first new connection over %v took %.3fs after the connector listened again, want at most %v\nconnector log:\n%s",
				i+1, f, took.Seconds(), recoveryBound, r.connectorLog())
		}
	}
}

// TestKernelShortConnections: the client opens many short connections
// (one small HTTP request each, "Connection: close") one after the
// other through the connector, and some through the reference, over
// IPv4 and IPv6. Every one through the connector must succeed, and
// afterwards the connector must have no flow left open.
func TestKernelShortConnections(t *testing.T) {
	netstacktest.CheckLeaks(t)
	r := newRig(t)
	counts := [2]int{viaConnector: 200, viaReference: 50} // cheap: not scaled
	for _, f := range []family{v4, v6} {
		for _, p := range []path{viaConnector, viaReference} {
			times, failed, err := r.shortConns(p, f, counts[p])
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(times)
			var total time.Duration
			for _, d := range times {
				total += d
			}
			line := fmt.Sprintf("%v %v: %d short connections, %d failed", p, f, counts[p], failed)
			if len(times) > 0 {
				line += fmt.Sprintf(", %.0f conns/s, median %.1f ms, max %.1f ms", float64(len(times))/total.Seconds(),
					ms(times[len(times)/2]), ms(times[len(times)-1]))
			}
			t.Log(line)
			if failed > 0 {
				t.Errorf("%d of %d short connections through the %v over %v failed", failed, counts[p], p, f)
			}
		}
	}

	// Every flow ends once both ends closed.
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, err := r.metrics()
		if err != nil {
			t.Fatal(err)
		}
		open := m[`appconnector_flows_open{proto="tcp"}`]
		if open == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the connector has %.0f TCP flows open 10 s after the last short connection closed", open)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// shortConns makes n requests, each on a new connection, one after the
// other, with one curl on path p over f; it returns the times of those
// that succeeded and how many failed.
func (r *rig) shortConns(p path, f family, n int) ([]time.Duration, int, error) {
	args := []string{"curl", "-sS", "--max-time", "5", "-H", "Connection: close", "-w", "%{http_code} %{num_connects} %{time_total}\n"}
	for i := range n {
		args = append(args, fmt.Sprintf("%s/small?%d", hostURL(p, f), i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(n)*5*time.Second+10*time.Second)
	defer cancel()
	cmd := command(ctx, nsExec(r.cli, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output() // a failed request fails curl; its line says which
	if ctx.Err() != nil {
		return nil, 0, fmt.Errorf("curl %d short connections via the %v over %v: %w", n, p, f, ctx.Err())
	}
	var times []time.Duration
	failed, lines := 0, 0
	for _, line := range strings.Split(string(out), "\n") {
		fs := strings.Fields(line)
		if len(fs) != 3 { // "ok", the body
			continue
		}
		lines++
		secs, perr := strconv.ParseFloat(fs[2], 64)
		if fs[0] != "200" || fs[1] != "1" || perr != nil {
			failed++
			continue
		}
		times = append(times, time.Duration(secs*float64(time.Second)))
	}
	if lines != n {
		return nil, 0, fmt.Errorf("curl %d short connections via the %v over %v: %d results (%v): %s", n, p, f, lines, err, strings.TrimSpace(stderr.String()))
	}
	return times, failed, nil
}

// TestKernelICMP: the kernel client's ping gets echo replies from a
// routed address through the connector, and "administratively
// prohibited" (not silence) from an address of no route; traceroute -T
// reaches a routed address.
func TestKernelICMP(t *testing.T) {
	netstacktest.CheckLeaks(t)
	r := newRig(t)
	pingFlag := [2]string{v4: "-4", v6: "-6"}
	prohibited := [2]string{v4: "Packet filtered", v6: "Administratively prohibited"}
	for _, f := range []family{v4, v6} {
		t.Run(f.String(), func(t *testing.T) {
			routed := upstreamVia[viaConnector][f]
			out, err := run(nsExec(r.cli, "ping", pingFlag[f], "-n", "-c", "3", "-i", "0.2", "-W", "2", routed)...)
			if err != nil || !strings.Contains(out, "3 received") {
				t.Errorf("ping %s (routed): want 3 replies: %v\n%s", routed, err, out)
			}

			out, err = run(nsExec(r.cli, "ping", pingFlag[f], "-n", "-c", "2", "-i", "0.2", "-W", "2", unrouted[f])...)
			if err == nil || !strings.Contains(out, prohibited[f]) {
				t.Errorf("ping %s (no route): want %q: %v\n%s", unrouted[f], prohibited[f], err, out)
			}

			out, err = run(nsExec(r.cli, "traceroute", pingFlag[f], "-T", "-n", "-p", strconv.Itoa(httpPort), "-q", "1", "-w", "2", "-m", "5", routed)...)
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if last := lines[len(lines)-1]; err != nil || !strings.Contains(last, " "+routed+" ") {
				t.Errorf("traceroute -T %s: want it reached: %v\n%s", routed, err, out)
			}
			t.Logf("traceroute -T %s:\n%s", routed, out)
		})
	}
}
