package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
)

// measurement is one figure from one run of one workload.
type measurement struct {
	metric, unit string
	higher       bool
	value        float64
	process      string // for per-process figures
}

const dialTimeout = 10 * time.Second

func dialSvc(sc *scenario, svc string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	return sc.dial(ctx, svc)
}

// bulkUp writes for d on one connection to the sink and returns the
// bytes the sink confirmed receiving.
func bulkUp(sc *scenario, d time.Duration) (int64, time.Duration, error) {
	c, err := dialSvc(sc, svcSink)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	buf := make([]byte, 64<<10)
	start := time.Now()
	end := start.Add(d)
	c.SetWriteDeadline(end.Add(30 * time.Second))
	for time.Now().Before(end) {
		if _, err := c.Write(buf); err != nil {
			return 0, 0, fmt.Errorf("bulk-up: write: %w", err)
		}
	}
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		return 0, 0, errors.New("bulk-up: connection cannot half-close")
	}
	cw.CloseWrite()
	var ack [8]byte
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		return 0, 0, fmt.Errorf("bulk-up: read count: %w", err)
	}
	// The sink has read everything when it answers.
	return int64(binary.BigEndian.Uint64(ack[:])), time.Since(start), nil
}

// bulkDown reads from the source for d and returns the bytes read.
func bulkDown(sc *scenario, d time.Duration) (int64, time.Duration, error) {
	c, err := dialSvc(sc, svcSource)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	buf := make([]byte, 64<<10)
	var n int64
	start := time.Now()
	end := start.Add(d)
	c.SetReadDeadline(end.Add(30 * time.Second))
	for time.Now().Before(end) {
		m, err := c.Read(buf)
		n += int64(m)
		if err != nil {
			return 0, 0, fmt.Errorf("bulk-down: read: %w", err)
		}
	}
	return n, time.Since(start), nil
}

// rtt sends one byte and waits for it, on one connection, for d (at most
// max round trips), and returns the round-trip times.
func rtt(sc *scenario, d time.Duration, max int) ([]time.Duration, error) {
	c, err := dialSvc(sc, svcEcho)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(d + 30*time.Second))
	var b [1]byte
	var out []time.Duration
	end := time.Now().Add(d)
	for len(out) < max && time.Now().Before(end) {
		t := time.Now()
		if _, err := c.Write(b[:]); err != nil {
			return nil, fmt.Errorf("rtt: %w", err)
		}
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return nil, fmt.Errorf("rtt: %w", err)
		}
		out = append(out, time.Since(t))
	}
	return out, nil
}

// connRate opens connections (connect, one byte each way, the server
// closes) with parallel workers for d and returns connections per second,
// how many completed and how many failed. It is an error only if more
// than 1% failed.
func connRate(sc *scenario, d time.Duration, parallel int) (rate float64, done, failed int64, err error) {
	var ok, bad atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	end := start.Add(d)
	var wg sync.WaitGroup
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var b [1]byte
			for time.Now().Before(end) {
				c, err := dialSvc(sc, svcAccept)
				if err == nil {
					c.SetDeadline(time.Now().Add(10 * time.Second))
					if _, err = c.Write(b[:]); err == nil {
						_, err = io.ReadFull(c, b[:])
					}
					c.Close()
				}
				if err != nil {
					if bad.Add(1) == 1 {
						firstErr.Store(err)
					}
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	done, failed = ok.Load(), bad.Load()
	if failed*100 > done+failed {
		return 0, done, failed, fmt.Errorf("conns-%d: %d of %d connections failed: %v", parallel, failed, failed+done, firstErr.Load())
	}
	return float64(done) / time.Since(start).Seconds(), done, failed, nil
}

// dnsLearn asks for names (each new to the connector, so each is learned
// as a route) with parallel workers; it returns the per-question latencies
// and the rate.
func dnsLearn(sc *scenario, names []string, parallel int) ([]time.Duration, float64, error) {
	lat := make([]time.Duration, len(names))
	var next atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	var wg sync.WaitGroup
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(names) {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				t := time.Now()
				err := sc.resolve(ctx, names[i])
				lat[i] = time.Since(t)
				cancel()
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return nil, 0, fmt.Errorf("dns: %w", err)
	}
	return lat, float64(len(names)) / time.Since(start).Seconds(), nil
}

// idleFlows opens n connections to the hold service, waits until the
// server holds them all, and returns each measured process's RSS growth
// per flow (KiB); then it closes them.
func idleFlows(sc *scenario, n int) (map[string]float64, error) {
	drained := func() bool { return sc.openFlows == nil || sc.openFlows() == 0 }
	if !waitUntil(60*time.Second, drained) {
		return nil, fmt.Errorf("idle: the connector still holds %d flows from earlier workloads", sc.openFlows())
	}
	procs := measuredProcs(sc)
	before := map[string]int64{}
	for name, pid := range procs {
		before[name] = rssKiB(pid)
	}
	conns := make([]net.Conn, 0, n)
	defer func() {
		// The server closes first (TIME-WAIT on its side, not on the
		// dialing side's ports); then the clients.
		sc.servers.releaseHeld()
		waitUntil(30*time.Second, func() bool { return sc.servers.heldCount() == 0 })
		for _, c := range conns {
			c.Close()
		}
		waitUntil(60*time.Second, drained)
	}()
	// Open them with a few workers; setup rate is measured elsewhere.
	var mu sync.Mutex
	var firstErr error
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				c, err := dialSvc(sc, svcHold)
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = err
					}
				} else {
					conns = append(conns, c)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		if sc.debug != nil {
			sc.debug()
		}
		return nil, fmt.Errorf("idle: %w", firstErr)
	}
	if !waitUntil(60*time.Second, func() bool { return sc.servers.heldCount() >= n }) {
		return nil, fmt.Errorf("idle: the server holds %d of %d flows", sc.servers.heldCount(), n)
	}
	time.Sleep(200 * time.Millisecond) // let buffers settle
	out := map[string]float64{}
	for name, pid := range procs {
		out[name] = float64(rssKiB(pid)-before[name]) / float64(n)
	}
	return out, nil
}

func waitUntil(d time.Duration, cond func() bool) bool {
	end := time.Now().Add(d)
	for !cond() {
		if time.Now().After(end) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// measuredProcs is the scenario's processes plus the harness itself.
func measuredProcs(sc *scenario) map[string]int {
	out := map[string]int{"harness": os.Getpid()}
	for name, pid := range sc.procs {
		out[name] = pid
	}
	return out
}

// cpuSeconds returns the user+system CPU time of process pid.
// cpuSince snapshots the CPU time of sc's measured processes. The
// returned function gives, for each, a measurement named metric: the CPU
// time since the snapshot divided by per (in the unit's scale: per GiB,
// per million connections for µs, ...).
func cpuSince(sc *scenario) func(metric, unit string, per float64) []measurement {
	procs := measuredProcs(sc)
	cpu0 := map[string]float64{}
	for name, pid := range procs {
		cpu0[name] = cpuSeconds(pid)
	}
	return func(metric, unit string, per float64) []measurement {
		if per <= 0 {
			return nil
		}
		var ms []measurement
		for _, name := range sortedKeys(procs) {
			ms = append(ms, measurement{metric: metric, unit: unit, value: max(cpuSeconds(procs[name])-cpu0[name], 0) / per, process: name})
		}
		return ms
	}
}

func cpuSeconds(pid int) float64 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces; fields after it are
	// counted from the closing parenthesis.
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / 100 // USER_HZ is 100 on Linux
}

// rssKiB returns the resident set size of process pid.
func rssKiB(pid int) int64 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

// percentile returns the p-th percentile (0..100) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}

// limitPacket is the plaintext of one tunnelled packet: a full packet at
// the tunnel's default MTU.
const limitPacket = 1420

// cryptoLimit measures the work every tunnelled byte needs at each end of
// a WireGuard tunnel: a ChaCha20-Poly1305 seal (the sender's) and open
// (the receiver's) of 1420-byte packets, on one core (this goroutine,
// locked to its thread). It returns the plaintext bytes carried and the
// time taken in the fastest of five slices of d: the bound on bulk
// throughput of any tunnel that does both ends' crypto on one core, as
// the machine gives it when nothing else runs (the processes of earlier
// workloads may still be winding down when it starts).
func cryptoLimit(d time.Duration) (int64, time.Duration, error) {
	waitQuiet(5 * time.Second)
	var bestN int64
	var bestD time.Duration
	for range 5 {
		n, took, err := cryptoSlice(d / 5)
		if err != nil {
			return 0, 0, err
		}
		if bestN == 0 || float64(n)/took.Seconds() > float64(bestN)/bestD.Seconds() {
			bestN, bestD = n, took
		}
	}
	return bestN, bestD, nil
}

// waitQuiet waits, at most max, until the machine's CPUs were at least 90%
// idle over 100 ms (from /proc/stat): the processes of earlier workloads
// wind down (closing thousands of idle flows, collecting garbage) after
// the workload itself has returned.
func waitQuiet(max time.Duration) (waited time.Duration, quiet bool) {
	idle := func() (idle, total float64) {
		data, err := os.ReadFile("/proc/stat")
		if err != nil {
			return 0, 0
		}
		line, _, _ := strings.Cut(string(data), "\n")
		for i, f := range strings.Fields(line)[1:] { // "cpu" user nice system idle iowait ...
			v, _ := strconv.ParseFloat(f, 64)
			total += v
			if i == 3 || i == 4 {
				idle += v
			}
		}
		return idle, total
	}
	start := time.Now()
	for end := start.Add(max); time.Now().Before(end); {
		i0, t0 := idle()
		time.Sleep(100 * time.Millisecond)
		i1, t1 := idle()
		if t1 <= t0 || (i1-i0)/(t1-t0) >= 0.9 {
			return time.Since(start), true
		}
	}
	return time.Since(start), false
}

// cryptoSlice seals and opens packets for d; see cryptoLimit.
func cryptoSlice(d time.Duration) (int64, time.Duration, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	key := make([]byte, chacha20poly1305.KeySize)
	rand.Read(key)
	aead, err := chacha20poly1305.New(key)
	if err != nil {
		return 0, 0, err
	}
	pkt := make([]byte, limitPacket)
	sealed := make([]byte, 0, limitPacket+aead.Overhead())
	opened := make([]byte, 0, limitPacket)
	var nonce [chacha20poly1305.NonceSize]byte
	var n int64
	start := time.Now()
	for counter := uint64(0); ; counter++ {
		binary.LittleEndian.PutUint64(nonce[4:], counter)
		sealed = aead.Seal(sealed[:0], nonce[:], pkt, nil)
		if opened, err = aead.Open(opened[:0], nonce[:], sealed, nil); err != nil {
			return 0, 0, err
		}
		n += limitPacket
		if counter%256 == 255 && time.Since(start) >= d {
			return n, time.Since(start), nil
		}
	}
}
