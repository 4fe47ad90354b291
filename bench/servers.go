package main

import (
	"encoding/binary"
	"io"
	"net"
	"strconv"
	"sync"
)

// The upstream services every scenario reaches, on host loopback or
// inside the stock scenario's server stack. Wherever possible the server
// closes first, so TIME-WAIT stays on the server side and the dialing
// side never runs out of ports.
const (
	svcSink   = "sink"   // reads to EOF, answers the byte count, closes
	svcSource = "source" // writes until the client goes away
	svcEcho   = "echo"   // echoes until EOF
	svcAccept = "accept" // answers one byte with one byte, closes
	svcHold   = "hold"   // keeps the connection open and silent
)

var services = []string{svcSink, svcSource, svcEcho, svcAccept, svcHold}

// servers runs the services on a set of listeners.
type servers struct {
	lns   map[string]net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex // guards held
	held  map[net.Conn]struct{}
	close sync.Once
}

// startServers serves each service on a listener from listen.
func startServers(listen func() (net.Listener, error)) (*servers, error) {
	s := &servers{lns: map[string]net.Listener{}, held: map[net.Conn]struct{}{}}
	for _, name := range services {
		ln, err := listen()
		if err != nil {
			s.stop()
			return nil, err
		}
		s.lns[name] = ln
		handler := s.handler(name)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				s.wg.Add(1)
				go func() {
					defer s.wg.Done()
					handler(c)
				}()
			}
		}()
	}
	return s, nil
}

// port returns the port a service listens on.
func (s *servers) port(name string) string {
	_, p, _ := net.SplitHostPort(s.lns[name].Addr().String())
	return p
}

func (s *servers) handler(name string) func(net.Conn) {
	switch name {
	case svcSink:
		return func(c net.Conn) {
			defer c.Close()
			n, _ := io.Copy(io.Discard, c)
			var b [8]byte
			binary.BigEndian.PutUint64(b[:], uint64(n))
			c.Write(b[:])
		}
	case svcSource:
		return func(c net.Conn) {
			defer c.Close()
			buf := make([]byte, 64<<10)
			for {
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}
	case svcEcho:
		return func(c net.Conn) {
			defer c.Close()
			io.Copy(c, c)
		}
	case svcAccept:
		return func(c net.Conn) {
			defer c.Close()
			var b [1]byte
			if _, err := io.ReadFull(c, b[:]); err == nil {
				c.Write(b[:])
			}
		}
	case svcHold:
		return func(c net.Conn) {
			s.mu.Lock()
			s.held[c] = struct{}{}
			s.mu.Unlock()
			io.Copy(io.Discard, c) // until the client closes
			s.mu.Lock()
			delete(s.held, c)
			s.mu.Unlock()
			c.Close()
		}
	}
	panic("unknown service " + name)
}

// releaseHeld closes every held connection from the server side, so
// TIME-WAIT stays on the server.
func (s *servers) releaseHeld() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.held {
		c.Close()
	}
}

// heldCount is the number of open hold connections.
func (s *servers) heldCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.held)
}

func (s *servers) stop() {
	s.close.Do(func() {
		for _, ln := range s.lns {
			ln.Close()
		}
		s.mu.Lock()
		for c := range s.held {
			c.Close()
		}
		s.mu.Unlock()
	})
	s.wg.Wait()
}

func joinHostPort(host, port string) string { return net.JoinHostPort(host, port) }

func itoa(n int) string { return strconv.Itoa(n) }
