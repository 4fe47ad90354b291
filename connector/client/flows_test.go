package client_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector/client"
	"github.com/appconnector/appconnector/connector/dnstest"
	"github.com/appconnector/appconnector/connector/dnszone"
	"github.com/appconnector/appconnector/connector/flowlog"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// TestClientFlowLog: the client's flow log has a line for each flow it
// opened, through a connector or directly, with how it ended, interim
// lines while one is open, and its failed dials.
func TestClientFlowLog(t *testing.T) {
	netstacktest.CheckLeaks(t)
	path := filepath.Join(t.TempDir(), "flows.log")
	fl, err := flowlog.Open(flowlog.Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	s := newSetup(t, 1, func(c *client.Config) {
		c.FlowLog = fl
		c.FlowRecordInterval = 100 * time.Millisecond
	})
	ctx := context.Background()
	echo := netstacktest.TCPEcho(t, "127.0.0.1:0")
	echo6 := netstacktest.TCPEcho(t, "[::1]:0")
	app := fmt.Sprintf("app.example.com:%d", echo.Port())

	c, err := s.client.DialContext(ctx, "tcp", app)
	if err != nil {
		t.Fatal(err)
	}
	netstacktest.EchoTCP(t, c, 1000)
	c.Close()
	d, err := s.client.DialContext(ctx, "tcp", echo6.String()) // no route: direct
	if err != nil {
		t.Fatal(err)
	}
	netstacktest.EchoTCP(t, d, 10)
	d.Close()
	closedPort := netstacktest.ClosedPort(t, "tcp", "127.0.0.1").Port()
	if _, err := s.client.DialContext(ctx, "tcp", fmt.Sprintf("app.example.com:%d", closedPort)); err == nil {
		t.Fatal("dial to a closed port succeeded")
	}
	held, err := s.client.DialContext(ctx, "tcp", app)
	if err != nil {
		t.Fatal(err)
	}
	held.Write([]byte("hi"))
	io.ReadFull(held, make([]byte, 2))
	time.Sleep(300 * time.Millisecond) // a few interim lines
	s.connectors[0].conn.Close()       // it resets its flows as it stops
	held.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := held.Read(make([]byte, 1)); err == nil {
		t.Fatal("a flow through a stopped connector still reads")
	}
	held.Close()
	netstacktest.WaitFor(t, func() bool { st := s.client.Status().FlowLog; return st != nil && st.Written >= 4 })
	s.client.Close()
	fl.Close()

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	key := s.connectors[0].key.PublicKey().String()
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r flowlog.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("%q: %v", sc.Text(), err)
		}
		bad := func() { t.Errorf("line %s", sc.Text()) }
		switch {
		case r.End == "closed" && r.Via == "connector":
			if r.Peer != key || r.Domain != "app.example.com" || r.Dst != echo || r.BytesUp != 1000 || r.BytesDown != 1000 || r.Proto != "tcp" {
				bad()
			}
		case r.End == "closed" && r.Via == "direct":
			if r.Peer != "" || r.Domain != "" || r.Dst != echo6 || r.BytesUp != 10 || r.BytesDown != 10 {
				bad()
			}
		case r.End == "dial_failed":
			if r.Peer != key || r.Reason != "refused" || r.Dst.Port() != closedPort || r.Count != 1 {
				bad()
			}
		case r.End == "open":
			// A snapshot: it may come between the write and the echo.
			if r.Peer != key || r.Dst != echo || r.BytesUp > 2 || r.BytesDown > r.BytesUp {
				bad()
			}
		case r.End == "reset", r.End == "connector_down":
			if r.Peer != key || r.Dst != echo || r.BytesUp != 2 || r.BytesDown != 2 {
				bad()
			}
		default:
			bad()
		}
		if r.End == "connector_down" {
			r.End = "reset"
		}
		seen[r.End+"/"+r.Via] = true
	}
	for _, want := range []string{"closed/connector", "closed/direct", "dial_failed/connector", "open/connector", "reset/connector"} {
		if !seen[want] {
			t.Errorf("no %s line", want)
		}
	}
}

// TestClientFlowLogConnectorDown: a flow the client resets because its
// connector went silent is logged so.
func TestClientFlowLogConnectorDown(t *testing.T) {
	netstacktest.CheckLeaks(t)
	echo := netstacktest.TCPEcho(t, "127.0.0.1:0")
	path := filepath.Join(t.TempDir(), "flows.log")
	fl, err := flowlog.Open(flowlog.Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer fl.Close()
	c, rs, _ := relayedSetup(t, 1, []*dnszone.Server{appUpstream(t)}, dnstest.New(t), func(c *client.Config) { c.FlowLog = fl })
	flow, err := c.DialContext(context.Background(), "tcp", fmt.Sprintf("app.example.com:%d", echo.Port()))
	if err != nil {
		t.Fatal(err)
	}
	flow.Write([]byte("0123456789"))
	if _, err := io.ReadFull(flow, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	rs[0].relay.drop.Store(true) // the connector goes silent
	flow.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := flow.Read(make([]byte, 1)); err == nil {
		t.Fatal("a flow through a silent connector still reads")
	}
	flow.Close()
	c.Close()
	fl.Close()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var r flowlog.Record
	if err := json.Unmarshal(data, &r); err != nil || r.End != "connector_down" || r.BytesUp != 10 || r.Via != "connector" {
		t.Errorf("flow log %q (%v), want one connector_down line", data, err)
	}
}
