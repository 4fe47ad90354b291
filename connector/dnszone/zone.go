// Package dnszone is a small authoritative DNS server on loopback: a
// miekg/dns server on UDP and TCP answering from a zone given as records
// in presentation format. The demo names its app with it, and the tests
// (through dnstest) use it as the upstream they control.
package dnszone

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/appconnector/appconnector/connector/upstream"
	"github.com/miekg/dns"
)

// Server answers from its records. Names not in the zone get NXDOMAIN; a
// name in it with no records of the asked type gets an empty NOERROR.
// CNAMEs are followed within the zone, as an authoritative server does. A
// record owned by "*.example.com." answers every name below example.com
// that has no records of its own.
type Server struct {
	// Addr is the "127.0.0.1:port" the server listens on (UDP and TCP).
	Addr string
	// Queries counts the questions received, but not those for the root
	// name, which the connector's health probe asks when idle.
	Queries atomic.Int64

	mu      sync.Mutex
	records map[string][]dns.RR // owner name (lower case, fqdn) → records
	rcode   map[string]int      // owner name → forced rcode
	udp     *dns.Server
	tcp     *dns.Server
	wg      sync.WaitGroup
}

// Start starts a server on 127.0.0.1 (a free port, UDP and TCP) with the
// given records. Close stops it.
func Start(records ...string) (*Server, error) {
	s := &Server{records: map[string][]dns.RR{}, rcode: map[string]int{}}
	for _, r := range records {
		if err := s.Add(r); err != nil {
			return nil, err
		}
	}
	// UDP and TCP on the same port: take a free UDP port and try for
	// TCP on it, a few times (another socket may hold the TCP port).
	var pc net.PacketConn
	var ln net.Listener
	var err error
	for range 20 {
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			return nil, fmt.Errorf("dnszone: %w", err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("dnszone: %w", err)
	}
	return s.serve(pc, ln), nil
}

// StartAt starts a server on addr ("127.0.0.1:port", UDP and TCP), such
// as that of a server closed before, with the given records.
func StartAt(addr string, records ...string) (*Server, error) {
	s := &Server{records: map[string][]dns.RR{}, rcode: map[string]int{}}
	for _, r := range records {
		if err := s.Add(r); err != nil {
			return nil, err
		}
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("dnszone: %w", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("dnszone: %w", err)
	}
	return s.serve(pc, ln), nil
}

// serve serves on pc and ln, returning once both are serving.
func (s *Server) serve(pc net.PacketConn, ln net.Listener) *Server {
	s.Addr = pc.LocalAddr().String()
	s.udp = &dns.Server{PacketConn: pc, Handler: s}
	s.tcp = &dns.Server{Listener: ln, Handler: s}
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		upstream.StartServer(&s.wg, srv) // a socket we just opened: it starts
	}
	return s
}

// Close stops the server and waits for its goroutines.
func (s *Server) Close() {
	s.udp.Shutdown()
	s.tcp.Shutdown()
	s.wg.Wait()
}

// Add adds one record in presentation format.
func (s *Server) Add(record string) error {
	rr, err := dns.NewRR(record)
	if err != nil {
		return fmt.Errorf("dnszone: record %q: %w", record, err)
	}
	if rr == nil {
		return fmt.Errorf("dnszone: record %q: empty", record)
	}
	name := strings.ToLower(rr.Header().Name)
	s.mu.Lock()
	s.records[name] = append(s.records[name], rr)
	s.mu.Unlock()
	return nil
}

// SetRcode makes questions for name (fqdn) fail with rcode, such as
// dns.RcodeServerFailure.
func (s *Server) SetRcode(name string, rcode int) {
	s.mu.Lock()
	s.rcode[strings.ToLower(dns.Fqdn(name))] = rcode
	s.mu.Unlock()
}

// ServeDNS implements dns.Handler.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	if len(req.Question) != 1 || req.Question[0].Name != "." {
		s.Queries.Add(1)
	}
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	s.mu.Lock()
	defer s.mu.Unlock()
	if rc, ok := s.rcode[name]; ok {
		m.Rcode = rc
		w.WriteMsg(m)
		return
	}
	if s.recordsLocked(name) == nil {
		m.Rcode = dns.RcodeNameError
		w.WriteMsg(m)
		return
	}
	// Follow CNAMEs inside the zone, at most 16 steps (zones with loops
	// are test input too).
	for range 16 {
		var next string
		for _, rr := range s.recordsLocked(name) {
			switch {
			case rr.Header().Rrtype == q.Qtype:
				m.Answer = append(m.Answer, rr)
			case rr.Header().Rrtype == dns.TypeCNAME:
				m.Answer = append(m.Answer, rr)
				next = strings.ToLower(rr.(*dns.CNAME).Target)
			}
		}
		if next == "" || q.Qtype == dns.TypeCNAME {
			break
		}
		name = next
	}
	w.WriteMsg(m)
}

// recordsLocked returns copies of name's records, or of the closest
// covering wildcard's, owned by name; nil if there are none.
func (s *Server) recordsLocked(name string) []dns.RR {
	rrs, ok := s.records[name]
	if !ok {
		wild, found := s.wildcardLocked(name)
		if !found {
			return nil
		}
		rrs = s.records[wild]
	}
	out := make([]dns.RR, len(rrs))
	for i, rr := range rrs {
		out[i] = dns.Copy(rr)
		out[i].Header().Name = name
	}
	return out
}

// wildcardLocked finds the closest "*.parent." record owner covering
// name.
func (s *Server) wildcardLocked(name string) (string, bool) {
	for rest := name; ; {
		i := strings.IndexByte(rest, '.')
		if i < 0 || i == len(rest)-1 {
			return "", false
		}
		rest = rest[i+1:]
		if _, ok := s.records["*."+rest]; ok {
			return "*." + rest, true
		}
	}
}

// Query sends a question for name (type "A", "AAAA", ...) on c, a
// connection to a DNS server from a dial (UDP or TCP, by c's local
// address), and returns the answer's rcode ("NOERROR", "REFUSED", ...) and
// its A and AAAA addresses.
func Query(c net.Conn, name, qtype string) (rcode string, addrs []netip.Addr, err error) {
	t, ok := dns.StringToType[qtype]
	if !ok {
		return "", nil, fmt.Errorf("dnszone: unknown type %q", qtype)
	}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), t)
	m.SetEdns0(1232, false)
	var r *dns.Msg
	if strings.HasPrefix(c.LocalAddr().Network(), "udp") {
		// One datagram each way, whatever c's type (dns.Conn frames
		// anything that is not a net.PacketConn as TCP).
		out, err := m.Pack()
		if err != nil {
			return "", nil, err
		}
		if _, err := c.Write(out); err != nil {
			return "", nil, err
		}
		buf := make([]byte, 1232)
		n, err := c.Read(buf)
		if err != nil {
			return "", nil, err
		}
		r = new(dns.Msg)
		if err := r.Unpack(buf[:n]); err != nil {
			return "", nil, err
		}
	} else {
		co := &dns.Conn{Conn: c}
		if err := co.WriteMsg(m); err != nil {
			return "", nil, err
		}
		if r, err = co.ReadMsg(); err != nil {
			return "", nil, err
		}
	}
	if r.Id != m.Id {
		return "", nil, fmt.Errorf("dnszone: reply id %d, want %d", r.Id, m.Id)
	}
	return dns.RcodeToString[r.Rcode], AnswerAddrs(r), nil
}

// AnswerAddrs returns the addresses of the A and AAAA records in m's
// answer section, in order.
func AnswerAddrs(m *dns.Msg) []netip.Addr {
	var out []netip.Addr
	for _, rr := range m.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			a, _ := netip.AddrFromSlice(rr.A.To4())
			out = append(out, a)
		case *dns.AAAA:
			a, _ := netip.AddrFromSlice(rr.AAAA)
			out = append(out, a)
		}
	}
	return out
}
