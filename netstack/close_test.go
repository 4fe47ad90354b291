package netstack

import (
	"context"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/appconnector/appconnector/netstack/netstacktest"
	"github.com/appconnector/appconnector/tun"
)

// TestSimultaneousCloseFinishes closes thousands of forwarded flows from
// both ends at once: the upstream closes (the gateway sends FIN) while the
// peer closes too. Every connection must finish closing on both stacks.
// gVisor before 2026-06 moved an endpoint to FIN-WAIT-1 only when its FIN
// left, not when it was queued, so a peer FIN processed in between was
// forgotten: the endpoint sat in FIN-WAIT-2 for the 60 s linger timeout
// (about 1 flow in 1,000 here), and a new SYN from the same port was
// refused meanwhile.
func TestSimultaneousCloseFinishes(t *testing.T) {
	netstacktest.CheckLeaks(t)
	const flows = 4000

	gw, cl := joinedStacks(t,
		Config{Addresses: []netip.Prefix{netip.MustParsePrefix("10.5.0.1/32")}, Allow: func(f Flow) bool { return f.Dst.Addr().IsLoopback() }},
		Config{Addresses: []netip.Prefix{netip.MustParsePrefix("10.5.0.2/32")}})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	held := make(chan net.Conn, flows)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held <- c
		}
	}()
	conns := make([]net.Conn, 0, flows)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range flows {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := cl.DialContext(ctx, "tcp", ln.Addr().String())
		cancel()
		if err != nil {
			t.Fatalf("flow %d: %v", len(conns)+1, err)
		}
		conns = append(conns, c)
	}
	ups := make([]net.Conn, 0, flows)
	for range flows {
		select {
		case c := <-held:
			ups = append(ups, c)
		case <-time.After(10 * time.Second):
			t.Fatalf("upstream accepted %d of %d flows", len(ups), flows)
		}
	}
	// Both ends of each flow close at once, 200 flows at a time. All
	// 4,000 together, on a loaded machine, left hundreds of gateway
	// endpoints in CLOSING (retransmitting their FIN while the client sat
	// in TIME-WAIT) or, with joinedStacks' old 1,024-packet queues, hung
	// it. (The flows are dialed one after another, so ups[i], accepted in
	// order, is conns[i]'s other end.)
	const batch = 200
	progress, lastOpen := time.Now(), gw.Stats().OpenFlows
	for i := 0; i < flows; i += batch {
		done := make(chan struct{})
		go func() {
			for _, c := range ups[i : i+batch] {
				c.Close()
			}
			close(done)
		}()
		for _, c := range conns[i : i+batch] {
			c.Close()
		}
		<-done
		for open := gw.Stats().OpenFlows; open > flows-i; open = gw.Stats().OpenFlows {
			if open < lastOpen {
				progress, lastOpen = time.Now(), open
			}
			if time.Since(progress) > 20*time.Second {
				t.Fatalf("closing flows %d-%d: none ended in 20 s; %d open; gateway endpoints %v; client endpoints %v",
					i, i+batch, open, tcpStates(gw), tcpStates(cl))
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	conns = nil

	// The gateway keeps closed flows 50 ms in TIME-WAIT; the client
	// (which only dials) keeps them 10 s, so there only TIME-WAIT may
	// remain.
	settled := func() bool {
		return len(tcpStates(gw)) == 0 && gw.Stats().OpenFlows == 0 && onlyTimeWait(tcpStates(cl))
	}
	for end := time.Now().Add(20 * time.Second); !settled(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("20 s after closing: gateway endpoints %v, open flows %d; client endpoints %v",
				tcpStates(gw), gw.Stats().OpenFlows, tcpStates(cl))
		}
	}
}

// tcpStates counts the stack's TCP endpoints by state.
func tcpStates(s *Stack) map[string]int { return s.TCPStates() }

func onlyTimeWait(m map[string]int) bool {
	for st := range m {
		if st != tcp.StateTimeWait.String() {
			return false
		}
	}
	return true
}

// joinedStacks starts a gateway stack and a client stack on their own
// devices, joined by two goroutines that copy each device's packets into
// the other (batches at a time), all closed at the test's cleanup.
//
// Each copy writes into the other stack, whose replies wait for room in
// its own outbound queue, read by the other copy: with both queues full
// the two wait on each other for good. Closing flows 200 at a time still
// filled the default 1,024-packet queues under load (retransmitted FINs),
// so these hold far more than such a test has in flight.
func joinedStacks(t *testing.T, gwCfg, clCfg Config) (gw, cl *Stack) {
	t.Helper()
	const queueLen = 1 << 15
	gwTun, err := tun.New(tun.Config{QueueLen: queueLen})
	if err != nil {
		t.Fatal(err)
	}
	clTun, err := tun.New(tun.Config{QueueLen: queueLen})
	if err != nil {
		t.Fatal(err)
	}
	if gw, err = New(gwTun, gwCfg); err != nil {
		t.Fatal(err)
	}
	if cl, err = New(clTun, clCfg); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	pipe := func(from, to *tun.Device) {
		defer wg.Done()
		bufs, sizes := make([][]byte, tun.DefaultBatchSize), make([]int, tun.DefaultBatchSize)
		for i := range bufs {
			bufs[i] = make([]byte, 65535)
		}
		out := make([][]byte, tun.DefaultBatchSize)
		for {
			n, err := from.Read(bufs, sizes, 0)
			if err != nil {
				return
			}
			for i := range n {
				out[i] = bufs[i][:sizes[i]]
			}
			if _, err := to.Write(out[:n], 0); err == os.ErrClosed {
				return
			}
		}
	}
	wg.Add(2)
	go pipe(gwTun, clTun)
	go pipe(clTun, gwTun)
	t.Cleanup(func() { cl.Close(); gw.Close(); gwTun.Close(); clTun.Close(); wg.Wait() })
	return gw, cl
}
