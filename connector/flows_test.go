package connector_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/flowlog"
	"github.com/appconnector/appconnector/netstack"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// parallel runs fn(0..n-1) on 16 goroutines.
func parallel(n int, fn func(i int)) {
	var wg sync.WaitGroup
	next := make(chan int)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				fn(i)
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

// TestFlowLog opens 1,000 flows that end each way a flow can end, through
// a real WireGuard peer, and checks every line of the flow log: the
// peer's key and tags, the app, the addresses, the bytes each way, and
// the ending; refusals come aggregated, with counts adding up to 1,000.
func TestFlowLog(t *testing.T) {
	netstacktest.CheckLeaks(t)
	const n = 1000
	path := filepath.Join(t.TempDir(), "flows.log")
	fl, err := flowlog.Open(flowlog.Config{Path: path, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	e := newEnvWith(t, connector.Config{FlowLog: fl, Netstack: netstack.Config{UDPIdleTimeout: 200 * time.Millisecond, MaxFlowsPerPeer: n}}, testPolicy)
	ctx := ctxTimeout(t, 5*time.Minute)
	fail := func(format string, args ...any) {
		t.Helper()
		t.Errorf(format, args...)
	}

	echo := netstacktest.TCPEcho(t, "127.0.0.1:0")
	parallel(n, func(int) { // closed
		c, err := e.client.DialContext(ctx, "tcp", echo.String())
		if err != nil {
			fail("closed: %v", err)
			return
		}
		netstacktest.EchoTCP(t, c, 100)
		c.Close()
	})

	resetter := netstacktest.ServeTCP(t, "127.0.0.1:0", func(c net.Conn) { // the host resets once the flow is up
		io.ReadFull(c, make([]byte, 1))
		c.(*net.TCPConn).SetLinger(0)
	})
	parallel(n, func(int) {
		c, err := e.client.DialContext(ctx, "tcp", resetter.String())
		if err != nil {
			fail("reset by host: %v", err)
			return
		}
		defer c.Close()
		c.Write([]byte("x"))
		c.SetReadDeadline(time.Now().Add(time.Minute))
		if _, err := io.Copy(io.Discard, c); err == nil {
			fail("reset by host: the flow ended cleanly")
		}
	})

	talker := netstacktest.ServeTCP(t, "127.0.0.1:0", func(c net.Conn) { // the peer resets: it closes with data unread
		c.Write(make([]byte, 8<<10))
		io.Copy(io.Discard, c)
	})
	parallel(n, func(int) {
		c, err := e.client.DialContext(ctx, "tcp", talker.String())
		if err != nil {
			fail("reset by peer: %v", err)
			return
		}
		c.SetReadDeadline(time.Now().Add(time.Minute))
		io.ReadFull(c, make([]byte, 1))
		c.Close()
	})

	udp := netstacktest.UDPEcho(t, "127.0.0.1:0")
	// The client's sockets stay open until every flow has gone idle, so
	// that no two flows share a source port.
	udpConns := make([]net.Conn, n)
	defer func() {
		for _, c := range udpConns {
			if c != nil {
				c.Close()
			}
		}
	}()
	parallel(n, func(i int) { // idle
		c, err := e.client.DialContext(ctx, "udp", udp.Addr.String())
		if err != nil {
			fail("idle: %v", err)
			return
		}
		udpConns[i] = c
		c.Write([]byte("x"))
		c.SetReadDeadline(time.Now().Add(time.Minute))
		if _, err := c.Read(make([]byte, 8)); err != nil {
			fail("idle: %v", err)
		}
	})

	notRouted := netip.MustParseAddrPort("127.0.0.2:80") // no app routes it
	closed := netstacktest.ClosedPort(t, "tcp", "127.0.0.1")
	for _, dst := range []netip.AddrPort{notRouted, closed} {
		parallel(n, func(int) {
			if c, err := e.client.DialContext(ctx, "tcp", dst.String()); err == nil {
				c.Close()
				fail("%v: dial succeeded", dst)
			}
		})
	}

	// Hold n flows: n more are refused at the limit, and the n held end
	// when the connector shuts down.
	netstacktest.WaitFor(t, func() bool { return e.conn.Stats().Netstack.OpenFlows == 0 })
	held := make([]net.Conn, n)
	parallel(n, func(i int) {
		c, err := e.client.DialContext(ctx, "tcp", echo.String())
		if err != nil {
			fail("hold: %v", err)
			return
		}
		c.Write([]byte("held"))
		io.ReadFull(c, make([]byte, 4))
		held[i] = c
	})
	parallel(n, func(int) {
		if c, err := e.client.DialContext(ctx, "tcp", echo.String()); err == nil {
			c.Close()
			fail("a flow beyond the limit went through")
		}
	})
	e.conn.Close()
	for _, c := range held {
		if c != nil {
			c.Close()
		}
	}
	fl.Close()
	if t.Failed() {
		return
	}

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ends := map[string]uint64{}
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		var r flowlog.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("line %d %q: %v", line, sc.Text(), err)
		}
		bad := func(why string) { t.Errorf("line %d (%s): %s", line, why, sc.Text()) }
		if r.Peer != e.clientKey() || !slices.Equal(r.Tags, []string{"tag:test"}) || r.Src.Addr() != clientV4.Addr() || r.Time.IsZero() || r.Start.IsZero() {
			bad("peer, tags, source or times")
		}
		count := uint64(1)
		switch r.End {
		case "closed":
			if r.Dst != echo || r.Proto != "tcp" || r.App != "loopback" || r.BytesUp != 100 || r.BytesDown != 100 {
				bad("closed")
			}
		case "reset_by_host":
			if r.Dst != resetter || r.BytesUp != 1 {
				bad("reset by host")
			}
		case "reset_by_peer":
			if r.Dst != talker || r.BytesDown == 0 {
				bad("reset by peer")
			}
		case "idle":
			if r.Dst != udp.Addr || r.Proto != "udp" || r.BytesUp != 1 || r.BytesDown != 1 {
				bad("idle")
			}
		case "shutdown":
			if r.Dst != echo || r.BytesUp != 4 || r.BytesDown != 4 {
				bad("shutdown")
			}
		case "refused_policy":
			if r.Dst != notRouted || r.App != "" || r.Count == 0 {
				bad("refused by policy")
			}
			count = r.Count
		case "dial_failed":
			if r.Dst != closed || r.Reason != "refused" || r.App != "loopback" || r.Count == 0 {
				bad("dial failed")
			}
			count = r.Count
		case "refused_limit":
			if r.Dst != echo || r.Count == 0 {
				bad("refused at the limit")
			}
			count = r.Count
		default:
			bad("unexpected end")
		}
		ends[r.End] += count
	}
	for _, end := range []string{"closed", "reset_by_host", "reset_by_peer", "idle", "shutdown", "refused_policy", "dial_failed", "refused_limit"} {
		if ends[end] != n {
			t.Errorf("%s: %d flows logged, want %d", end, ends[end], n)
		}
	}
	t.Logf("%d lines for %d flows", line, 8*n)
}

// TestFlowLogStalledDisk: with the flow log's file stalled (a pipe nobody
// reads), flows go on as before; the lines that do not fit are dropped
// and counted.
func TestFlowLogStalledDisk(t *testing.T) {
	netstacktest.CheckLeaks(t)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	fl, err := flowlog.Open(flowlog.Config{Out: pw, Queue: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	e := newEnvWith(t, connector.Config{FlowLog: fl}, testPolicy)
	echo := netstacktest.TCPEcho(t, "127.0.0.1:0")
	ctx := ctxTimeout(t, 2*time.Minute)
	// A pipe holds 64 KiB: about 200 lines fill it, the queue takes 16.
	parallel(1000, func(int) {
		c, err := e.client.DialContext(ctx, "tcp", echo.String())
		if err != nil {
			t.Errorf("dial with the flow log stalled: %v", err)
			return
		}
		netstacktest.EchoTCP(t, c, 100)
		c.Close()
	})
	netstacktest.WaitFor(t, func() bool { return e.conn.Stats().Netstack.OpenFlows == 0 })
	if st := fl.Stats(); st.Dropped == 0 {
		t.Errorf("flow log stats %+v: nothing dropped, so the file was not stalled", st)
	}
}
