package netstack_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/appconnector/appconnector/netstack"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// records collects a stack's FlowRecords.
type records struct {
	mu  sync.Mutex
	all []netstack.FlowRecord
}

func (r *records) add(fr netstack.FlowRecord) {
	r.mu.Lock()
	r.all = append(r.all, fr)
	r.mu.Unlock()
}

// waitFor returns the first record that match accepts, waiting for it.
func (r *records) waitFor(t *testing.T, what string, match func(netstack.FlowRecord) bool) netstack.FlowRecord {
	t.Helper()
	var got netstack.FlowRecord
	deadline := time.Now().Add(20 * time.Second)
	for {
		r.mu.Lock()
		for _, fr := range r.all {
			if match(fr) {
				got = fr
				r.mu.Unlock()
				return got
			}
		}
		r.mu.Unlock()
		if time.Now().After(deadline) {
			r.mu.Lock()
			defer r.mu.Unlock()
			var have []string
			for _, fr := range r.all {
				have = append(have, fmt.Sprintf("%v end=%q reason=%q", fr.Flow, fr.End, fr.Reason))
			}
			t.Fatalf("no flow record: %s; have %s", what, strings.Join(have, "; "))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// to matches a record of a flow to dst with end.
func to(dst netip.AddrPort, end string) func(netstack.FlowRecord) bool {
	return func(fr netstack.FlowRecord) bool { return fr.Dst == dst && fr.End == end }
}

// TestFlowRecords: each way a flow ends gives one record saying so, with
// its bytes each way; a flow still open gets interim records.
func TestFlowRecords(t *testing.T) {
	netstacktest.CheckLeaks(t)
	var recs records
	p := newPair(t, netstack.Config{Allow: allowLoopback, FlowRecords: recs.add,
		UDPIdleTimeout: 300 * time.Millisecond, FlowRecordInterval: 100 * time.Millisecond})
	ctx := ctxTimeout(t, time.Minute)

	t.Run("closed", func(t *testing.T) {
		echo := netstacktest.TCPEcho(t, "127.0.0.1:0")
		c, err := p.client.DialContext(ctx, "tcp", echo.String())
		if err != nil {
			t.Fatal(err)
		}
		netstacktest.EchoTCP(t, c, 3000)
		c.Close()
		fr := recs.waitFor(t, "closed", to(echo, netstack.EndClosed))
		if fr.Proto != netstack.TCP || fr.BytesUp != 3000 || fr.BytesDown != 3000 || fr.Duration <= 0 || fr.Src.Addr() != clientV4.Addr() {
			t.Errorf("record %+v", fr)
		}
	})
	t.Run("refused_policy", func(t *testing.T) {
		dst := netip.MustParseAddrPort("192.0.2.1:80") // not loopback: Allow refuses it
		if _, err := p.client.DialContext(ctx, "tcp", dst.String()); err == nil {
			t.Fatal("dial succeeded")
		}
		recs.waitFor(t, "policy", to(dst, netstack.EndPolicy))
	})
	t.Run("dial_failed", func(t *testing.T) {
		dst := netstacktest.ClosedPort(t, "tcp", "127.0.0.1")
		if _, err := p.client.DialContext(ctx, "tcp", dst.String()); err == nil {
			t.Fatal("dial succeeded")
		}
		if fr := recs.waitFor(t, "dial failed", to(dst, netstack.EndDialFailed)); fr.Reason != "refused" {
			t.Errorf("reason %q, want refused", fr.Reason)
		}
	})
	t.Run("reset_by_host", func(t *testing.T) {
		dst := netstacktest.ServeTCP(t, "127.0.0.1:0", func(c net.Conn) {
			io.ReadFull(c, make([]byte, 1)) // the flow is up
			c.(*net.TCPConn).SetLinger(0)
		})
		c, err := p.client.DialContext(ctx, "tcp", dst.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("x"))
		if fr := recs.waitFor(t, "host reset", to(dst, netstack.EndHostReset)); fr.BytesUp != 1 {
			t.Errorf("record %+v: %d bytes up, want 1", fr, fr.BytesUp)
		}
	})
	t.Run("reset_by_peer", func(t *testing.T) {
		dst := netstacktest.ServeTCP(t, "127.0.0.1:0", func(c net.Conn) {
			c.Write(make([]byte, 64<<10))
			io.Copy(io.Discard, c)
		})
		c, err := p.client.DialContext(ctx, "tcp", dst.String())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		c.Close() // with unread data: a reset
		fr := recs.waitFor(t, "peer reset", to(dst, netstack.EndPeerReset))
		if fr.BytesDown == 0 {
			t.Errorf("record %+v: no bytes down", fr)
		}
	})
	t.Run("idle", func(t *testing.T) {
		echo := netstacktest.UDPEcho(t, "127.0.0.1:0")
		c, err := p.client.DialContext(ctx, "udp", echo.Addr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("hello"))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 16)); err != nil {
			t.Fatal(err)
		}
		fr := recs.waitFor(t, "udp idle", to(echo.Addr, netstack.EndIdle))
		if fr.Proto != netstack.UDP || fr.BytesUp != 5 || fr.BytesDown != 5 {
			t.Errorf("record %+v", fr)
		}
	})
	t.Run("interim_and_shutdown", func(t *testing.T) {
		echo := netstacktest.TCPEcho(t, "127.0.0.1:0")
		c, err := p.client.DialContext(ctx, "tcp", echo.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("still here"))
		if _, err := io.ReadFull(c, make([]byte, 10)); err != nil {
			t.Fatal(err)
		}
		// Interim records are snapshots: one may come between the write
		// and the echo. A later one shows both.
		recs.waitFor(t, "interim", func(fr netstack.FlowRecord) bool {
			return to(echo, "")(fr) && fr.BytesUp == 10 && fr.BytesDown == 10
		})
		p.gw.Close()
		recs.waitFor(t, "shutdown", to(echo, netstack.EndShutdown))
	})
}

// TestFlowRecordLimit: a flow refused at a limit is recorded so.
func TestFlowRecordLimit(t *testing.T) {
	netstacktest.CheckLeaks(t)
	var recs records
	p := newPair(t, netstack.Config{Allow: allowLoopback, FlowRecords: recs.add, MaxFlowsPerPeer: 1})
	echo := netstacktest.TCPEcho(t, "127.0.0.1:0")
	ctx := ctxTimeout(t, 20*time.Second)
	c, err := p.client.DialContext(ctx, "tcp", echo.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx2, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := p.client.DialContext(ctx2, "tcp", echo.String()); err == nil {
		t.Fatal("a second flow got through a limit of one")
	}
	recs.waitFor(t, "limit", to(echo, netstack.EndLimit))
}
