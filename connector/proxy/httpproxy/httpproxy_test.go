package httpproxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/appconnector/appconnector/connector/proxy"
	"github.com/appconnector/appconnector/connector/proxy/proxytest"
	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// startHTTPProxy serves p on a new loopback listener until the test ends.
func startHTTPProxy(t testing.TB, p *Server) string {
	t.Helper()
	if p.Dial == nil {
		p.Dial = proxytest.Dial
	}
	if p.Logf == nil {
		p.Logf = t.Logf
	}
	return proxytest.Serve(t, p.Serve, p.Close)
}

// upstreamRecord is what the upstream test server saw of one request.
type upstreamRecord struct {
	method, host, uri, body string
	header                  http.Header
}

// startUpstream starts an HTTP server on 127.0.0.1 that records requests
// and answers "<method> <host> <uri> <body>".
func startUpstream(t testing.TB) (port uint16, records func() []upstreamRecord) {
	t.Helper()
	var (
		mu  sync.Mutex
		got []upstreamRecord
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, upstreamRecord{r.Method, r.Host, r.RequestURI, string(body), r.Header.Clone()})
		mu.Unlock()
		h := w.Header()
		h.Set("Connection", "X-Drop-Me")
		h.Set("X-Drop-Me", "1")
		h.Set("Keep-Alive", "timeout=5")
		h.Set("Proxy-Authenticate", "Basic")
		h.Set("Upgrade", "nothing")
		h.Set("X-Keep", "kept")
		fmt.Fprintf(w, "%s %s %s %s", r.Method, r.Host, r.RequestURI, body)
	}))
	t.Cleanup(srv.Close)
	_, port = proxytest.HostPort(t, srv.Listener.Addr())
	return port, func() []upstreamRecord {
		mu.Lock()
		defer mu.Unlock()
		return append([]upstreamRecord(nil), got...)
	}
}

// rawHTTP writes req on c and reads one response, body included.
func rawHTTP(t testing.TB, c net.Conn, br *bufio.Reader, method, req string) (*http.Response, string) {
	t.Helper()
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return resp, string(body)
}

func dialProxy(t testing.TB, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

func TestHTTPProxyConnect(t *testing.T) {
	netstacktest.CheckLeaks(t)
	addr := startHTTPProxy(t, &Server{})
	_, port := proxytest.HostPort(t, proxytest.TCPEcho(t, "tcp", "127.0.0.1:0"))
	for _, target := range []string{fmt.Sprintf("app.test:%d", port), fmt.Sprintf("127.0.0.1:%d", port)} {
		t.Run(target, func(t *testing.T) {
			c, br := dialProxy(t, addr)
			// The first tunnel bytes travel with the request.
			fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\nearly ", target, target)
			resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusOK || resp.Status != "200 Connection established" {
				t.Fatalf("status %q", resp.Status)
			}
			msg := strings.Repeat("tunnel data ", 10000)
			io.WriteString(c, msg)
			c.(*net.TCPConn).CloseWrite()
			got, err := io.ReadAll(br)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != "early "+msg {
				t.Fatalf("echo of %d bytes, want %d", len(got), len("early "+msg))
			}
		})
	}
}

func TestHTTPProxyAbsoluteURI(t *testing.T) {
	netstacktest.CheckLeaks(t)
	addr := startHTTPProxy(t, &Server{})
	port, records := startUpstream(t)
	host := fmt.Sprintf("app.test:%d", port)
	c, br := dialProxy(t, addr)

	// Two requests and a HEAD on one client connection (keep-alive).
	resp, body := rawHTTP(t, c, br, "GET", fmt.Sprintf("GET http://%s/a?b=c HTTP/1.1\r\nHost: %s\r\nUser-Agent: test/1\r\n\r\n", host, host))
	if resp.StatusCode != 200 || body != "GET "+host+" /a?b=c " {
		t.Fatalf("GET: %s %q", resp.Status, body)
	}
	if resp.Close {
		t.Fatal("GET response closes the connection")
	}
	post := "field=value&x=y"
	resp, body = rawHTTP(t, c, br, "POST", fmt.Sprintf("POST http://%s/form HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n%s", host, host, len(post), post))
	if resp.StatusCode != 200 || body != "POST "+host+" /form "+post {
		t.Fatalf("POST: %s %q", resp.Status, body)
	}
	chunked := "4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n"
	resp, body = rawHTTP(t, c, br, "PUT", fmt.Sprintf("PUT http://%s/up HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n\r\n%s", host, host, chunked))
	if resp.StatusCode != 200 || body != "PUT "+host+" /up abcdefg" {
		t.Fatalf("chunked PUT: %s %q", resp.Status, body)
	}
	resp, body = rawHTTP(t, c, br, "HEAD", fmt.Sprintf("HEAD http://%s/h HTTP/1.1\r\nHost: %s\r\n\r\n", host, host))
	if resp.StatusCode != 200 || body != "" {
		t.Fatalf("HEAD: %s %q", resp.Status, body)
	}
	recs := records()
	if len(recs) != 4 || recs[0].header.Get("User-Agent") != "test/1" {
		t.Fatalf("upstream saw %+v", recs)
	}
	if _, ok := recs[1].header["User-Agent"]; ok {
		t.Errorf("proxy added a User-Agent: %q", recs[1].header.Get("User-Agent"))
	}
}

func TestHTTPProxyHopByHop(t *testing.T) {
	netstacktest.CheckLeaks(t)
	addr := startHTTPProxy(t, &Server{})
	port, records := startUpstream(t)
	host := fmt.Sprintf("app.test:%d", port)
	c, br := dialProxy(t, addr)
	resp, _ := rawHTTP(t, c, br, "GET", fmt.Sprintf("GET http://%s/ HTTP/1.1\r\nHost: %s\r\n"+
		"Connection: keep-alive, X-Private\r\nX-Private: secret\r\nProxy-Connection: keep-alive\r\n"+
		"Keep-Alive: 300\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nTe: gzip\r\n"+
		"Upgrade: websocket\r\nX-Keep: yes\r\n\r\n", host, host))
	if resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	h := records()[0].header
	for _, name := range []string{"X-Private", "Proxy-Connection", "Keep-Alive", "Proxy-Authorization", "Te", "Upgrade"} {
		if v, ok := h[name]; ok {
			t.Errorf("upstream got request header %s: %q", name, v)
		}
	}
	if h.Get("X-Keep") != "yes" {
		t.Errorf("upstream lost X-Keep: %v", h)
	}
	for _, name := range []string{"X-Drop-Me", "Keep-Alive", "Proxy-Authenticate", "Upgrade"} {
		if v, ok := resp.Header[name]; ok {
			t.Errorf("client got response header %s: %q", name, v)
		}
	}
	if v := resp.Header.Get("Connection"); v != "" {
		t.Errorf("client got Connection: %q", v)
	}
	if resp.Header.Get("X-Keep") != "kept" {
		t.Errorf("client lost X-Keep: %v", resp.Header)
	}
}

// A request to upgrade its connection (WebSocket's handshake, here a
// made-up protocol that echoes lines) is forwarded with its Upgrade and
// Connection headers, and after the upstream's 101 the proxy relays the
// connection both ways until either side closes it.
func TestHTTPProxyUpgrade(t *testing.T) {
	netstacktest.CheckLeaks(t)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" || !strings.EqualFold(r.Header.Get("Connection"), "upgrade") {
			http.Error(w, "want Upgrade: echo", http.StatusBadRequest)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		brw.Flush()
		for {
			line, err := brw.ReadString('\n')
			if err != nil {
				return
			}
			brw.WriteString("echo: " + line)
			brw.Flush()
		}
	}))
	defer up.Close()
	_, port := proxytest.HostPort(t, up.Listener.Addr())
	addr := startHTTPProxy(t, &Server{})
	c, br := dialProxy(t, addr)
	host := fmt.Sprintf("app.test:%d", port)
	fmt.Fprintf(c, "GET http://%s/chat HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n", host, host)
	resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != "echo" {
		t.Fatalf("response %s, Upgrade %q; want 101 and echo", resp.Status, resp.Header.Get("Upgrade"))
	}
	for _, msg := range []string{"one", "two"} {
		fmt.Fprintf(c, "%s\n", msg)
		got, err := br.ReadString('\n')
		if err != nil || got != "echo: "+msg+"\n" {
			t.Fatalf("after the upgrade: %q, %v; want the echo of %q", got, err, msg)
		}
	}
	c.Close()
}

func TestHTTPProxyErrors(t *testing.T) {
	netstacktest.CheckLeaks(t)
	p := &Server{DialTimeout: 50 * time.Millisecond}
	addr := startHTTPProxy(t, p)
	closedPort := netstacktest.ClosedPort(t, "tcp", "127.0.0.1").Port() // nothing listens there
	for _, tt := range []struct {
		host string
		code int
	}{
		{fmt.Sprintf("app.test:%d", closedPort), http.StatusBadGateway},
		{"blocked.test:80", http.StatusForbidden},
		{"slow.test:80", http.StatusGatewayTimeout},
		{"broken.test:80", http.StatusBadGateway},
	} {
		for _, method := range []string{"CONNECT", "GET"} {
			t.Run(method+" "+tt.host, func(t *testing.T) {
				c, br := dialProxy(t, addr)
				target := "http://" + tt.host + "/"
				if method == "CONNECT" {
					target = tt.host
				}
				resp, body := rawHTTP(t, c, br, method, fmt.Sprintf("%s %s HTTP/1.1\r\nHost: %s\r\n\r\n", method, target, tt.host))
				if resp.StatusCode != tt.code {
					t.Fatalf("status %s (%q), want %d", resp.Status, body, tt.code)
				}
				if body == "" || len(body) > 500 {
					t.Errorf("body %q, want a short text", body)
				}
			})
		}
	}
	for _, tt := range []struct{ name, req string }{
		{"origin-form", "GET /index.html HTTP/1.1\r\nHost: app.test\r\n\r\n"},
		{"https-scheme", "GET https://app.test/ HTTP/1.1\r\nHost: app.test\r\n\r\n"},
		{"connect-no-port", "CONNECT app.test HTTP/1.1\r\nHost: app.test\r\n\r\n"},
		{"connect-port-zero", "CONNECT app.test:0 HTTP/1.1\r\nHost: app.test:0\r\n\r\n"},
		{"connect-path", "CONNECT /x HTTP/1.1\r\nHost: app.test\r\n\r\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, br := dialProxy(t, addr)
			method, _, _ := strings.Cut(tt.req, " ")
			if resp, body := rawHTTP(t, c, br, method, tt.req); resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("status %s (%q), want 400", resp.Status, body)
			}
		})
	}
	t.Run("garbage", func(t *testing.T) {
		c, br := dialProxy(t, addr)
		if resp, _ := rawHTTP(t, c, br, "GET", "\x05\x01\x00 nonsense\r\n\r\n"); resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("status %s, want 400", resp.Status)
		}
	})
	// Each answer above was counted by its reason (a request net/http
	// rejects before the proxy sees it is not: "garbage").
	st := p.Stats()
	if st.Refused[proxy.RefusedPolicy] != 2 || st.Refused[proxy.RefusedDial] != 6 || st.Refused[proxy.RefusedRequest] != 5 {
		t.Errorf("refusals %v (%v), want policy 2, dial 6, request 5", st.Refused, proxy.RefusalNames)
	}
	if st.Conns != 14 {
		t.Errorf("%d connections counted, want 14", st.Conns)
	}
}

func TestHTTPProxyGoClient(t *testing.T) {
	netstacktest.CheckLeaks(t)
	addr := startHTTPProxy(t, &Server{})
	port, _ := startUpstream(t)
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "secure %s %s", r.Host, r.URL.Path)
	}))
	defer tlsSrv.Close()
	_, tlsPort := proxytest.HostPort(t, tlsSrv.Listener.Addr())
	roots := x509.NewCertPool()
	roots.AddCert(tlsSrv.Certificate())
	proxyURL := &url.URL{Scheme: "http", Host: addr}
	tr := &http.Transport{
		Proxy:           http.ProxyURL(proxyURL),
		TLSClientConfig: &tls.Config{RootCAs: roots},
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for _, tt := range []struct{ url, want string }{
		{fmt.Sprintf("http://app.test:%d/plain", port), fmt.Sprintf("GET app.test:%d /plain ", port)},
		{fmt.Sprintf("http://app.test:%d/again", port), fmt.Sprintf("GET app.test:%d /again ", port)},
		{fmt.Sprintf("https://example.com:%d/tls", tlsPort), fmt.Sprintf("secure example.com:%d /tls", tlsPort)},
	} {
		resp, err := client.Get(tt.url)
		if err != nil {
			t.Fatalf("GET %s: %v", tt.url, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != tt.want {
			t.Errorf("GET %s = %q, want %q", tt.url, body, tt.want)
		}
	}
	resp, err := client.Post(fmt.Sprintf("http://app.test:%d/p", port), "text/plain", strings.NewReader("posted"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf("POST app.test:%d /p posted", port); string(body) != want {
		t.Errorf("POST = %q, want %q", body, want)
	}
	tr.CloseIdleConnections()
	tlsSrv.Close()
}

func TestHTTPProxyStreaming(t *testing.T) {
	netstacktest.CheckLeaks(t)
	addr := startHTTPProxy(t, &Server{})
	next := make(chan struct{})
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		select {
		case <-next:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "second\n")
	}))
	defer upstream.Close()
	_, port := proxytest.HostPort(t, upstream.Listener.Addr())
	c, br := dialProxy(t, addr)
	fmt.Fprintf(c, "GET http://app.test:%d/ HTTP/1.1\r\nHost: app.test\r\n\r\n", port)
	resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	// The first line arrives while the upstream still holds the rest.
	if line, err := rd.ReadString('\n'); err != nil || line != "first\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	close(next)
	if rest, err := io.ReadAll(rd); err != nil || string(rest) != "second\n" {
		t.Fatalf("rest %q, %v", rest, err)
	}
	upstream.Close()
}

func TestHTTPProxyMaxConns(t *testing.T) {
	netstacktest.CheckLeaks(t)
	addr := startHTTPProxy(t, &Server{MaxConns: 1})
	port, _ := startUpstream(t)
	host := fmt.Sprintf("app.test:%d", port)
	req := fmt.Sprintf("GET http://%s/ HTTP/1.1\r\nHost: %s\r\n\r\n", host, host)
	c1, br1 := dialProxy(t, addr)
	if resp, _ := rawHTTP(t, c1, br1, "GET", req); resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	c2, _ := dialProxy(t, addr)
	io.WriteString(c2, req)
	proxytest.ExpectEOF(t, c2)
	c1.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, req)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err == nil && resp.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no slot freed after closing a connection")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestHTTPProxyClose(t *testing.T) {
	netstacktest.CheckLeaks(t)
	p := &Server{Dial: proxytest.Dial, Logf: t.Logf, DialTimeout: time.Minute}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Serve(ln) }()
	t.Cleanup(func() { p.Close() })
	addr := ln.Addr().String()
	_, echoPort := proxytest.HostPort(t, proxytest.TCPEcho(t, "tcp", "127.0.0.1:0"))
	hold := make(chan struct{})
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		select {
		case <-hold:
		case <-r.Context().Done():
		}
	}))
	defer upstream.Close()
	defer close(hold)
	_, port := proxytest.HostPort(t, upstream.Listener.Addr())

	// An open tunnel, a request waiting on its upstream, an idle client
	// and one waiting on a slow dial.
	tunnel, tbr := dialProxy(t, addr)
	fmt.Fprintf(tunnel, "CONNECT app.test:%d HTTP/1.1\r\n\r\n", echoPort)
	if resp, err := http.ReadResponse(tbr, &http.Request{Method: "CONNECT"}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v", err)
	}
	waiting, wbr := dialProxy(t, addr)
	fmt.Fprintf(waiting, "GET http://app.test:%d/ HTTP/1.1\r\nHost: x\r\n\r\n", port)
	if resp, err := http.ReadResponse(wbr, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET: %v", err)
	}
	dialProxy(t, addr)
	slow, _ := dialProxy(t, addr)
	io.WriteString(slow, "CONNECT slow.test:1 HTTP/1.1\r\n\r\n")
	slowGET, _ := dialProxy(t, addr)
	io.WriteString(slowGET, "GET http://slow.test/ HTTP/1.1\r\nHost: slow.test\r\n\r\n")
	time.Sleep(50 * time.Millisecond) // let the dials start; not needed to pass

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve = %v after Close, want nil", err)
	}
	for _, br := range []*bufio.Reader{tbr, wbr} {
		if _, err := io.ReadAll(br); err != nil && !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("connection not closed: %v", err)
		}
	}
	p.Close() // idempotent
	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Serve(ln2); err != nil {
		t.Fatalf("Serve after Close = %v, want nil", err)
	}
}

func TestHTTPProxyCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl is not installed")
	}
	netstacktest.CheckLeaks(t)
	addr := startHTTPProxy(t, &Server{})
	port, _ := startUpstream(t)
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "secure %s", r.Host)
	}))
	defer tlsSrv.Close()
	_, tlsPort := proxytest.HostPort(t, tlsSrv.Listener.Addr())
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw})
	if err := os.WriteFile(caFile, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	proxyURL := "http://" + addr
	host := fmt.Sprintf("app.test:%d", port)
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"absolute-uri", []string{"-x", proxyURL, "http://" + host + "/abs"}, "GET " + host + " /abs "},
		{"post", []string{"-x", proxyURL, "--data-binary", "hello", "http://" + host + "/post"}, "POST " + host + " /post hello"},
		{"proxytunnel", []string{"-x", proxyURL, "-p", "http://" + host + "/tunnel"}, "GET " + host + " /tunnel "},
		{"https", []string{"-x", proxyURL, "--cacert", caFile, fmt.Sprintf("https://example.com:%d/", tlsPort)}, fmt.Sprintf("secure example.com:%d", tlsPort)},
		{"keep-alive", []string{"-x", proxyURL, "http://" + host + "/1", "http://" + host + "/2"}, "GET " + host + " /1 GET " + host + " /2 "},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out := proxytest.Curl(t, curl, append([]string{"-q", "-sS", "--max-time", "20"}, tt.args...)...)
			if out != tt.want {
				t.Fatalf("curl got %q, want %q", out, tt.want)
			}
		})
	}
	tlsSrv.Close()
}

// TestHTTPProxyDialTimeoutContext checks that the DialFunc gets a deadline.
func TestHTTPProxyDialTimeoutContext(t *testing.T) {
	netstacktest.CheckLeaks(t)
	var mu sync.Mutex
	var deadlines []bool
	addr := startHTTPProxy(t, &Server{Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
		_, ok := ctx.Deadline()
		mu.Lock()
		deadlines = append(deadlines, ok)
		mu.Unlock()
		return proxytest.Dial(ctx, network, address)
	}})
	port, _ := startUpstream(t)
	c, br := dialProxy(t, addr)
	rawHTTP(t, c, br, "GET", fmt.Sprintf("GET http://app.test:%d/ HTTP/1.1\r\nHost: x\r\n\r\n", port))
	fmt.Fprintf(c, "CONNECT app.test:%d HTTP/1.1\r\n\r\n", port)
	if resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"}); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(deadlines) != 2 || !deadlines[0] || !deadlines[1] {
		t.Fatalf("dials with deadline: %v", deadlines)
	}
}

func TestHTTPProxyUpstreamAbort(t *testing.T) {
	netstacktest.CheckLeaks(t)
	addr := startHTTPProxy(t, &Server{})
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/sized" {
			w.Header().Set("Content-Length", "100")
		}
		io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		c, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			c.Close() // the body ends early
		}
	}))
	defer upstream.Close()
	_, port := proxytest.HostPort(t, upstream.Listener.Addr())
	for _, path := range []string{"/chunked", "/sized"} {
		t.Run(path, func(t *testing.T) {
			c, br := dialProxy(t, addr)
			fmt.Fprintf(c, "GET http://app.test:%d%s HTTP/1.1\r\nHost: x\r\n\r\n", port, path)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				return // broken before the body: fine too
			}
			body, err := io.ReadAll(resp.Body)
			if err == nil {
				t.Fatalf("truncated upstream body %q arrived as a complete response", body)
			}
		})
	}
	upstream.Close()
}
