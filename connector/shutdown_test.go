package connector_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/appconnector/appconnector/connector"
	"github.com/appconnector/appconnector/connector/dnstest"
	"github.com/appconnector/appconnector/netstack"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// TestShutdownDrains: once Shutdown starts, new flows are refused and app
// names get SERVFAIL, while an open flow keeps working; Shutdown returns
// as soon as that flow ends.
func TestShutdownDrains(t *testing.T) {
	netstacktest.CheckLeaks(t)
	up := dnstest.New(t, "app.example.com. 60 IN A 127.0.0.1")
	e := newEnvWith(t, connector.Config{DNSUpstreams: []string{up.Addr}},
		`[{"name": "app", "connectors": ["*"], "domains": ["app.example.com"], "routes": ["127.0.0.1/32", "::1/128"]}]`)
	echo := netstacktest.TCPEcho(t, "127.0.0.1:0")
	open, err := e.client.DialContext(ctxTimeout(t, 10*time.Second), "tcp", echo.String())
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	pingPong(t, open, 64<<10)

	done := make(chan error, 1)
	go func() { done <- e.conn.Shutdown(ctxTimeout(t, 20*time.Second)) }()

	// New flows are refused (a reset, not a timeout) once draining starts.
	netstacktest.WaitFor(t, func() bool { return dialOK(t, e, echo) != nil })
	if r := query(t, e, "app.example.com.", dns.TypeA, false); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("app name while draining: %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	// The open flow still works, and Shutdown waits for it.
	pingPong(t, open, 64<<10)
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned with a flow open: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	open.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown after the last flow ended: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Shutdown did not return after the last flow ended")
	}
}

// TestShutdownDeadline: a flow still open when the deadline passes is
// reset, and Shutdown says so.
func TestShutdownDeadline(t *testing.T) {
	netstacktest.CheckLeaks(t)
	e := newEnv(t, netstack.Config{})
	echo := netstacktest.TCPEcho(t, "127.0.0.1:0")
	open, err := e.client.DialContext(ctxTimeout(t, 10*time.Second), "tcp", echo.String())
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	pingPong(t, open, 1024)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := e.conn.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown with a flow open past the deadline: %v", err)
	}
	open.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := open.Read(make([]byte, 1)); err == nil || err == io.EOF || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("the open flow after Shutdown's deadline: read %v, want a reset", err)
	}
}

// pingPong writes n bytes to an echo connection and reads them back,
// leaving the connection open (unlike netstacktest.EchoTCP, which
// half-closes it).
func pingPong(t *testing.T, c net.Conn, n int) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	want := bytes.Repeat([]byte("0123456789abcdef"), n/16+1)[:n]
	errc := make(chan error, 1)
	go func() { _, err := c.Write(want); errc <- err }()
	got := make([]byte, n)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("echo: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("echo write: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("echo: different bytes back")
	}
}
