// The floor under the RTT workload: what one UDP round trip over loopback
// costs when the echo runs in this process and when it runs in another
// process. The connector scenario crosses processes twice per round trip
// (harness → connector over WireGuard/UDP, connector → upstream in the
// harness over TCP), the stock scenario never does.
//
//	go test ./bench -run X -bench UDPRoundTrip -benchtime 20000x -count 5

package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// TestMain also makes the test binary a UDP echo server on 127.0.0.1
// (role "udp-echo") that prints its port and serves until stdin closes.
func TestMain(m *testing.M) {
	os.Exit(netstacktest.Main(m, map[string]func([]string) int{"udp-echo": func([]string) int {
		if err := udpEchoProcess(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	}}))
}

func udpEchoProcess() error {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return err
	}
	fmt.Println(c.LocalAddr().(*net.UDPAddr).Port)
	go func() {
		bufio.NewReader(os.Stdin).ReadByte() // EOF when the parent goes
		c.Close()
	}()
	udpEcho(c)
	return nil
}

func udpEcho(c *net.UDPConn) {
	b := make([]byte, 2048)
	for {
		n, a, err := c.ReadFromUDPAddrPort(b)
		if err != nil {
			return
		}
		c.WriteToUDPAddrPort(b[:n], a)
	}
}

func BenchmarkUDPRoundTrip(b *testing.B) {
	b.Run("in-process", func(b *testing.B) {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan struct{})
		go func() { udpEcho(c); close(done) }()
		defer func() { c.Close(); <-done }()
		udpRoundTrips(b, c.LocalAddr().(*net.UDPAddr).Port)
	})
	b.Run("cross-process", func(b *testing.B) {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), netstacktest.RoleEnv("udp-echo"))
		stdin, err := cmd.StdinPipe()
		if err != nil {
			b.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		defer func() { stdin.Close(); cmd.Wait() }()
		var port int
		if _, err := fmt.Fscan(stdout, &port); err != nil {
			b.Fatalf("echo process: %v", err)
		}
		udpRoundTrips(b, port)
	})
}

// udpRoundTrips sends b.N one-byte datagrams to port, each after the
// previous one's echo, and reports the median and 99th percentile.
func udpRoundTrips(b *testing.B, port int) {
	c, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64)
	rtts := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if _, err := c.Write([]byte{1}); err != nil {
			b.Fatal(err)
		}
		c.SetReadDeadline(start.Add(5 * time.Second))
		if _, err := c.Read(buf); err != nil {
			b.Fatal(err)
		}
		rtts = append(rtts, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(rtts)
	b.ReportMetric(float64(rtts[len(rtts)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(rtts[len(rtts)*99/100].Nanoseconds())/1e3, "p99-µs")
}
