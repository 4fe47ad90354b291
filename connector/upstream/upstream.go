// Package upstream is the DNS servers a connector resolves names with:
// plain DNS (UDP, then TCP for a truncated answer), DNS over TLS (RFC
// 7858) and DNS over HTTPS (RFC 8484), each keeping its counters, latency
// and last answer; the plain DNS exchange over any dial function that the
// client uses too (ExchangeOver); and the name servers of a resolv.conf
// file.
package upstream

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/appconnector/appconnector/connector/netx"
	"github.com/miekg/dns"
)

// TryTimeout bounds one exchange with one upstream.
const TryTimeout = 2 * time.Second

// Encrypted upstreams' host names are resolved with the host's resolver
// and again this often (on failure, the last addresses stay in use).
const upstreamResolveEvery = 5 * time.Minute

// maxIdleDoTConns is how many idle DNS-over-TLS connections an upstream
// keeps for reuse.
const maxIdleDoTConns = 4

// LatencyBuckets are the upper bounds, in seconds, of the upstream
// latency histogram.
var LatencyBuckets = [...]float64{.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5}

// Options configures the encrypted upstreams.
type Options struct {
	// RootCAs verifies the servers' certificates; nil means the system's
	// roots.
	RootCAs *x509.CertPool
	// Resolve looks up an upstream's host name; nil means the host's
	// resolver (net.DefaultResolver).
	Resolve func(ctx context.Context, host string) ([]netip.Addr, error)
}

// Upstream is one DNS server. It is safe for concurrent use.
type Upstream struct {
	Name string // as configured
	ex   exchanger

	queries, failures atomic.Uint64
	buckets           [len(LatencyBuckets) + 1]atomic.Uint64 // per LatencyBuckets, then +Inf
	sumNanos          atomic.Uint64
	lastOK            atomic.Int64 // UnixNano of its last answer, 0 if none
}

// exchanger sends one question and reads its answer.
type exchanger interface {
	exchange(ctx context.Context, m *dns.Msg) (*dns.Msg, error)
	close()
}

// Check reports whether s is an upstream Parse accepts, with an error
// naming it if not.
func Check(s string) error {
	_, err := Parse(s, Options{})
	return err
}

// Parse reads an upstream: "ip:port" (plain DNS), "tls://host[:port]"
// (DNS over TLS, port 853 by default) or "https://host[:port]/path" (DNS
// over HTTPS).
func Parse(s string, opts Options) (*Upstream, error) {
	if !strings.Contains(s, "://") {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return nil, fmt.Errorf("dns upstream %q: want ip:port, tls://host[:port] or https://host/path", s)
		}
		return &Upstream{Name: s, ex: newPlainUpstream(ap.String())}, nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("dns upstream %q: %w", s, err)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Hostname() == "" {
		return nil, fmt.Errorf("dns upstream %q: want tls://host[:port] or https://host[:port]/path, with no user, query or fragment", s)
	}
	var defPort string
	switch u.Scheme {
	case "tls":
		if u.Path != "" && u.Path != "/" {
			return nil, fmt.Errorf("dns upstream %q: a tls:// upstream has no path", s)
		}
		defPort = "853"
	case "https":
		if u.Path == "" || u.Path == "/" {
			return nil, fmt.Errorf("dns upstream %q: an https:// upstream needs its path, such as /dns-query", s)
		}
		defPort = "443"
	default:
		return nil, fmt.Errorf("dns upstream %q: scheme %q: want tls or https", s, u.Scheme)
	}
	port := u.Port()
	if port == "" {
		port = defPort
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return nil, fmt.Errorf("dns upstream %q: bad port %q", s, port)
	}
	host := u.Hostname()
	tc := &tls.Config{ServerName: host, RootCAs: opts.RootCAs, MinVersion: tls.VersionTLS12}
	d := newHostDialer(host, port, opts.Resolve)
	if u.Scheme == "tls" {
		return &Upstream{Name: s, ex: &dotUpstream{dial: d, tls: tc}}, nil
	}
	tc.NextProtos = []string{"h2", "http/1.1"}
	return &Upstream{Name: s, ex: newDoHUpstream(u.String(), d, tc)}, nil
}

// Exchange asks this upstream m, recording the outcome. An answer with
// another ID or question is an error.
func (u *Upstream) Exchange(ctx context.Context, m *dns.Msg) (*dns.Msg, error) {
	u.queries.Add(1)
	start := time.Now()
	r, err := u.ex.exchange(ctx, m)
	if err == nil && (r.Id != m.Id || len(r.Question) != 1 || !strings.EqualFold(r.Question[0].Name, m.Question[0].Name) ||
		r.Question[0].Qtype != m.Question[0].Qtype) {
		err = errors.New("the answer is for another question")
	}
	if err != nil {
		u.failures.Add(1)
		return nil, err
	}
	took := time.Since(start)
	i := 0
	for i < len(LatencyBuckets) && took.Seconds() > LatencyBuckets[i] {
		i++
	}
	u.buckets[i].Add(1)
	u.sumNanos.Add(uint64(took))
	if r.Rcode != dns.RcodeServerFailure {
		u.lastOK.Store(time.Now().UnixNano())
	} else {
		u.failures.Add(1)
	}
	return r, nil
}

// plainUpstream is DNS over UDP, and over TCP for answers too large for
// UDP, from host sockets.
type plainUpstream struct {
	addr string
	dial netx.DialFunc
}

func newPlainUpstream(addr string) *plainUpstream {
	return &plainUpstream{addr: addr, dial: (&net.Dialer{}).DialContext}
}

func (p *plainUpstream) exchange(ctx context.Context, m *dns.Msg) (*dns.Msg, error) {
	return ExchangeOver(ctx, p.dial, p.addr, m)
}

// ExchangeOver asks the plain DNS server at server ("ip:port") m over UDP,
// then over TCP if the answer is truncated or did not arrive whole (some
// servers send large answers without TC), opening each connection with
// dial: host sockets, or a tunnel's stack. Each try is bounded by ctx and
// by TryTimeout; answers with another ID are skipped. It is the one plain
// DNS exchange of appconnector: the connector's upstreams, and the
// client's questions to its connectors and to the host's servers.
func ExchangeOver(ctx context.Context, dial netx.DialFunc, server string, m *dns.Msg) (*dns.Msg, error) {
	try := func(network string) (*dns.Msg, error) {
		ctx, cancel := context.WithTimeout(ctx, TryTimeout)
		defer cancel()
		c, err := dial(ctx, network, server)
		if err != nil {
			return nil, err
		}
		defer c.Close()
		return exchangeOn(ctx, &dns.Conn{Conn: c, UDPSize: dns.DefaultMsgSize}, m)
	}
	r, err := try("udp")
	var ne net.Error
	if (err == nil && r.Truncated) || (err != nil && ctx.Err() == nil && !(errors.As(err, &ne) && ne.Timeout())) {
		r, err = try("tcp")
	}
	return r, err
}

func (p *plainUpstream) close() {}

// hostDialer dials an encrypted upstream's host: its addresses, looked up
// on first use and again every upstreamResolveEvery, tried in order.
type hostDialer struct {
	host, port string
	resolve    func(ctx context.Context, host string) ([]netip.Addr, error)

	mu       sync.Mutex
	addrs    []netip.Addr
	resolved time.Time
}

func newHostDialer(host, port string, resolve func(context.Context, string) ([]netip.Addr, error)) *hostDialer {
	d := &hostDialer{host: host, port: port, resolve: resolve}
	if a, err := netip.ParseAddr(host); err == nil {
		d.addrs = []netip.Addr{a.Unmap()} // a literal needs no lookup
		d.resolve = nil
	}
	if d.resolve == nil && d.addrs == nil {
		d.resolve = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}
	}
	return d
}

// lookup returns the host's addresses, looking them up again when they
// are old; a failed lookup keeps the last ones.
func (d *hostDialer) lookup(ctx context.Context) ([]netip.Addr, error) {
	d.mu.Lock()
	addrs, fresh := d.addrs, time.Since(d.resolved) < upstreamResolveEvery
	d.mu.Unlock()
	if d.resolve == nil || (fresh && len(addrs) > 0) {
		return addrs, nil
	}
	got, err := d.resolve(ctx, d.host)
	if err == nil && len(got) == 0 {
		err = errors.New("no addresses")
	}
	if err != nil {
		if len(addrs) > 0 {
			return addrs, nil
		}
		return nil, fmt.Errorf("look up %s: %w", d.host, err)
	}
	for i := range got {
		got[i] = got[i].Unmap()
	}
	d.mu.Lock()
	d.addrs, d.resolved = got, time.Now()
	d.mu.Unlock()
	return got, nil
}

func (d *hostDialer) DialContext(ctx context.Context, network, _ string) (net.Conn, error) {
	addrs, err := d.lookup(ctx)
	if err != nil {
		return nil, err
	}
	var nd net.Dialer
	var errs []error
	for _, a := range addrs {
		c, err := nd.DialContext(ctx, "tcp", net.JoinHostPort(a.String(), d.port))
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

// dotUpstream is DNS over TLS. Connections are kept for reuse, one
// question at a time on each.
type dotUpstream struct {
	dial *hostDialer
	tls  *tls.Config

	mu     sync.Mutex
	idle   []*dns.Conn
	closed bool
}

func (u *dotUpstream) exchange(ctx context.Context, m *dns.Msg) (*dns.Msg, error) {
	// A kept connection the server has since closed fails at once: try
	// once more on a new one.
	for attempt := 0; ; attempt++ {
		co, reused, err := u.conn(ctx)
		if err != nil {
			return nil, err
		}
		r, err := exchangeOn(ctx, co, m)
		if err == nil {
			u.put(co)
			return r, nil
		}
		co.Close()
		if !reused || attempt > 0 || ctx.Err() != nil {
			return nil, err
		}
	}
}

// exchangeOn writes m on co and reads its answer, within ctx's deadline.
func exchangeOn(ctx context.Context, co *dns.Conn, m *dns.Msg) (*dns.Msg, error) {
	if dl, ok := ctx.Deadline(); ok {
		co.SetDeadline(dl)
	} else {
		co.SetDeadline(time.Now().Add(TryTimeout))
	}
	stop := context.AfterFunc(ctx, func() { co.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := co.WriteMsg(m); err != nil {
		return nil, err
	}
	for {
		r, err := co.ReadMsg()
		if err != nil {
			return nil, err
		}
		if r.Id == m.Id {
			return r, nil
		}
		// A late answer to an earlier question on this connection.
	}
}

func (u *dotUpstream) conn(ctx context.Context) (co *dns.Conn, reused bool, err error) {
	u.mu.Lock()
	if n := len(u.idle); n > 0 {
		co = u.idle[n-1]
		u.idle = u.idle[:n-1]
		u.mu.Unlock()
		return co, true, nil
	}
	u.mu.Unlock()
	raw, err := u.dial.DialContext(ctx, "tcp", "")
	if err != nil {
		return nil, false, err
	}
	tc := tls.Client(raw, u.tls)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, false, fmt.Errorf("tls: %w", err)
	}
	return &dns.Conn{Conn: tc}, false, nil
}

func (u *dotUpstream) put(co *dns.Conn) {
	co.SetDeadline(time.Time{})
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed || len(u.idle) >= maxIdleDoTConns {
		co.Close()
		return
	}
	u.idle = append(u.idle, co)
}

func (u *dotUpstream) close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.closed = true
	for _, co := range u.idle {
		co.Close()
	}
	u.idle = nil
}

// dohUpstream is DNS over HTTPS: a POST of the question in wire format,
// over HTTP/2 where the server speaks it, on kept connections.
type dohUpstream struct {
	url string
	hc  *http.Client
}

// maxDoHAnswer bounds an answer's body (the largest DNS message).
const maxDoHAnswer = 65535

func newDoHUpstream(u string, d *hostDialer, tc *tls.Config) *dohUpstream {
	return &dohUpstream{url: u, hc: &http.Client{Transport: &http.Transport{
		DialContext:         d.DialContext,
		TLSClientConfig:     tc,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: maxIdleDoTConns,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: TryTimeout,
		Proxy:               nil, // the connector's own traffic goes direct
	}}}
}

func (u *dohUpstream) exchange(ctx context.Context, m *dns.Msg) (*dns.Msg, error) {
	// ID 0 (RFC 8484 section 4.1): identical questions look identical
	// to HTTP caches.
	q := m.Copy()
	q.Id = 0
	b, err := q.Pack()
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, "POST", u.url, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/dns-message")
	req.Header.Set("Accept", "application/dns-message")
	resp, err := u.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("http status %s", resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/dns-message" {
		return nil, fmt.Errorf("content type %q, want application/dns-message", ct)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDoHAnswer+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxDoHAnswer {
		return nil, errors.New("answer larger than a DNS message")
	}
	r := new(dns.Msg)
	if err := r.Unpack(body); err != nil {
		return nil, fmt.Errorf("answer: %w", err)
	}
	if r.Id != 0 {
		return nil, fmt.Errorf("answer has ID %d, want 0", r.Id)
	}
	r.Id = m.Id
	return r, nil
}

func (u *dohUpstream) close() { u.hc.CloseIdleConnections() }

// Close closes the connections kept for reuse; an Exchange after it may
// open new ones.
func (u *Upstream) Close() { u.ex.close() }

// LastAnswer is when the upstream last answered other than SERVFAIL; zero
// if it never did.
func (u *Upstream) LastAnswer() time.Time {
	if t := u.lastOK.Load(); t != 0 {
		return time.Unix(0, t)
	}
	return time.Time{}
}

// Stats are an upstream's counters.
type Stats struct {
	Queries, Failures uint64
	// Answers counts the answers by time taken: Answers[i] those within
	// LatencyBuckets[i] (and above the bucket before), the last those
	// slower than every bucket. Seconds is the time of all of them.
	Answers [len(LatencyBuckets) + 1]uint64
	Seconds float64
}

// Stats returns a snapshot of the counters.
func (u *Upstream) Stats() Stats {
	st := Stats{Queries: u.queries.Load(), Failures: u.failures.Load(), Seconds: time.Duration(u.sumNanos.Load()).Seconds()}
	for i := range st.Answers {
		st.Answers[i] = u.buckets[i].Load()
	}
	return st
}

// StartServer runs srv (its PacketConn or Listener set) on a goroutine
// counted in wg, and returns once it serves, or with the error that kept
// it from starting. Shutdown then stops it. The connector's DNS, the
// client's and dnszone's start their servers with it.
func StartServer(wg *sync.WaitGroup, srv *dns.Server) error {
	started, failed := make(chan struct{}), make(chan error, 1)
	srv.NotifyStartedFunc = func() { close(started) }
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := srv.ActivateAndServe(); err != nil {
			failed <- err
		}
	}()
	select {
	case <-started:
		return nil
	case err := <-failed:
		return err
	}
}
