package wgbind

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

func setMark(uc *net.UDPConn, mark uint32) error {
	rc, err := uc.SyscallConn()
	if err != nil {
		return fmt.Errorf("wgbind: set mark: %w", err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
	}); err != nil {
		return fmt.Errorf("wgbind: set mark: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("wgbind: set mark %d: %w", mark, serr)
	}
	return nil
}
