package wireguard

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// ServeUAPI answers WireGuard's cross-platform userspace API on ln, read
// only: `get=1` is answered with what get writes (key=value lines, what
// `wg show` prints); `set=1` is refused with EPERM, since the
// configuration comes from appconnector's own files. It returns when ln is
// closed, after closing the connections it serves. The answer holds the
// interface's private key: serve it only where the operator alone can
// reach it.
func ServeUAPI(ln net.Listener, get func(io.Writer) error) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	defer func() {
		// Do not wait for idle clients: close them.
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		mu.Lock()
		conns[conn] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			serveUAPIConn(conn, get)
			conn.Close()
			mu.Lock()
			delete(conns, conn)
			mu.Unlock()
		}()
	}
}

func serveUAPIConn(conn net.Conn, get func(io.Writer) error) {
	r := bufio.NewReader(conn)
	w := bufio.NewWriter(conn)
	defer w.Flush()
	for {
		// One operation per exchange; a client may send several.
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		op, err := r.ReadString('\n')
		if err != nil {
			return
		}
		switch op {
		case "get=1\n":
			if b, err := r.ReadByte(); err != nil || b != '\n' {
				w.WriteString("errno=22\n\n") // EINVAL
				return
			}
			if err := get(w); err != nil {
				w.WriteString("errno=5\n\n") // EIO
				return
			}
			w.WriteString("errno=0\n\n")
		default:
			// A set (or anything else): read to the blank line that ends
			// it, then refuse.
			for line := op; line != "\n"; {
				if line, err = r.ReadString('\n'); err != nil {
					return
				}
			}
			w.WriteString("errno=" + strconv.Itoa(int(syscall.EPERM)) + "\n\n")
		}
		if err := w.Flush(); err != nil {
			return
		}
	}
}
