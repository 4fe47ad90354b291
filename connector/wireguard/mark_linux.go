package wireguard

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

func setMark(uc *net.UDPConn, mark uint32) error {
	rc, err := uc.SyscallConn()
	if err != nil {
		return fmt.Errorf("wireguard: set mark: %w", err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
	}); err != nil {
		return fmt.Errorf("wireguard: set mark: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("wireguard: set mark %d: %w", mark, serr)
	}
	return nil
}

// socketBuffer is the send and receive buffer size asked for: bursts of
// small packets (thousands of flows closing at once) must not overflow a
// default-sized buffer, which loses packets and stalls TCP inside the
// tunnel on retransmission timers.
const socketBuffer = 7 << 20

// setBuffers enlarges the socket's buffers: SO_*BUFFORCE where allowed
// (CAP_NET_ADMIN), otherwise as far as net.core.[rw]mem_max lets an
// unprivileged process.
func setBuffers(uc *net.UDPConn) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		for _, opt := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt[0], socketBuffer) != nil {
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt[1], socketBuffer)
			}
		}
	})
}
