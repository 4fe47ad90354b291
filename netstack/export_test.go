package netstack

import (
	"bytes"
	"fmt"
	"net/netip"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// DumpTCP describes, for a test's failure message, every TCP endpoint of
// s (4-tuple, gVisor state, readiness, RTO, last error) and the
// goroutines that are inside this package, grouped by identical stacks.
func DumpTCP(s *Stack) string {
	return EndpointStates(s) + netstackGoroutines()
}

// EndpointStates counts s's TCP endpoints by state and describes up to 20
// of those that are not in TIME-WAIT.
func EndpointStates(s *Stack) string {
	var b strings.Builder
	eps := s.stack.RegisteredEndpoints()
	fmt.Fprintf(&b, "%d endpoints %v\n", len(eps), tcpStates(s))
	shown := 0
	for _, e := range eps {
		te, ok := e.(*tcp.Endpoint)
		if !ok || te.EndpointState() == tcp.StateTimeWait {
			continue
		}
		if shown++; shown > 20 {
			b.WriteString("  ...\n")
			break
		}
		var info tcpip.TCPInfoOption
		te.GetSockOpt(&info)
		id := te.Info().(*stack.TransportEndpointInfo).ID
		fmt.Fprintf(&b, "  %v:%d <- %v:%d %v readiness %#x rto %v lasterr %v\n",
			id.LocalAddress, id.LocalPort, id.RemoteAddress, id.RemotePort,
			te.EndpointState(), te.Readiness(readinessMask), info.RTO, te.LastError())
	}
	return b.String()
}

// netstackGoroutines returns the stacks of the goroutines with a frame in
// this package, identical ones counted once.
func netstackGoroutines() string {
	buf := make([]byte, 64<<20)
	buf = buf[:runtime.Stack(buf, true)]
	counts := map[string]int{}
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if !bytes.Contains(g, []byte("appconnector/netstack.")) {
			continue
		}
		// Drop the header (goroutine id, wait time) and the argument
		// values so that identical stacks group.
		lines := strings.Split(string(g), "\n")
		head := lines[0]
		if i := strings.Index(head, "["); i >= 0 {
			head = head[i:]
			if j := strings.Index(head, ","); j >= 0 {
				head = head[:j] + "]"
			}
		}
		for i, l := range lines[1:] {
			if j := strings.LastIndex(l, "("); j > 0 && !strings.HasPrefix(l, "\t") {
				lines[i+1] = l[:j]
			}
			if j := strings.Index(l, " +0x"); j > 0 {
				lines[i+1] = l[:j]
			}
		}
		counts[head+"\n"+strings.Join(lines[1:], "\n")]++
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "goroutines in netstack at %v:\n", time.Now().Format(time.TimeOnly))
	for _, k := range keys {
		fmt.Fprintf(&b, "%d× %s\n\n", counts[k], k)
	}
	return b.String()
}

// TCPEndpoint describes one TCP endpoint of a stack for a test.
type TCPEndpoint struct {
	Local, Remote netip.AddrPort
	State         string
	ep            *tcp.Endpoint
}

// Detail describes the endpoint's readiness, RTO, last error and non-zero
// counters.
func (e TCPEndpoint) Detail() string {
	var info tcpip.TCPInfoOption
	e.ep.GetSockOpt(&info)
	return fmt.Sprintf("readiness %#x rto %v lasterr %v %s", e.ep.Readiness(readinessMask), info.RTO, e.ep.LastError(), nonZero(reflect.ValueOf(e.ep.Stats()), ""))
}

// TCPEndpoints lists s's TCP endpoints.
func TCPEndpoints(s *Stack) []TCPEndpoint {
	var out []TCPEndpoint
	for _, e := range s.stack.RegisteredEndpoints() {
		te, ok := e.(*tcp.Endpoint)
		if !ok {
			continue
		}
		id := te.Info().(*stack.TransportEndpointInfo).ID
		out = append(out, TCPEndpoint{
			Local:  netip.AddrPortFrom(addrFrom(id.LocalAddress), id.LocalPort),
			Remote: netip.AddrPortFrom(addrFrom(id.RemoteAddress), id.RemotePort),
			State:  te.EndpointState().String(),
			ep:     te,
		})
	}
	return out
}

// StackTCPStats returns the non-zero TCP counters of s's gVisor stack.
func StackTCPStats(s *Stack) string {
	st := s.stack.Stats()
	return nonZero(reflect.ValueOf(&st.TCP), "")
}

// nonZero prints the non-zero StatCounters under v.
func nonZero(v reflect.Value, prefix string) string {
	for v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface {
		if v.IsNil() {
			return ""
		}
		if c, ok := v.Interface().(*tcpip.StatCounter); ok {
			if n := c.Value(); n != 0 {
				return fmt.Sprintf("%s=%d ", prefix, n)
			}
			return ""
		}
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return ""
	}
	if v.Type() == reflect.TypeOf(tcpip.StatCounter{}) {
		if !v.CanAddr() {
			return ""
		}
		return nonZero(v.Addr(), prefix)
	}
	var b strings.Builder
	for i := range v.NumField() {
		if !v.Type().Field(i).IsExported() {
			continue
		}
		name := v.Type().Field(i).Name
		if prefix != "" {
			name = prefix + "." + name
		}
		b.WriteString(nonZero(v.Field(i), name))
	}
	return b.String()
}
