package wireguard

import (
	"encoding/binary"
	"net"

	"golang.org/x/sys/unix"
)

// UDP segmentation offload (Linux): one sendmsg carries a run of
// equal-sized datagrams to one destination, and the kernel cuts it up
// (UDP_SEGMENT); on receive the kernel may hand over several datagrams
// from one source as one buffer with their size in a control message
// (UDP_GRO). On loopback the run is never cut at all. WireGuard sends runs
// of same-sized packets (full-MTU data, or ACKs) to a peer, so this saves
// most of the per-packet system calls.

const (
	// maxSegments is the most datagrams the kernel accepts in one
	// UDP_SEGMENT send.
	maxSegments = 64
	// maxRun is the most bytes in one such send.
	maxRun = 65000
)

// oobSize is the control buffer a message needs for one uint16 option.
var oobSize = unix.CmsgSpace(2)

// enableOffload turns UDP_GRO on and reports which offloads the socket has.
func enableOffload(uc *net.UDPConn) (tx, rx bool) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return false, false
	}
	rc.Control(func(fd uintptr) {
		_, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT)
		tx = err == nil
		rx = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil
	})
	return tx, rx
}

// putSegmentSize writes a UDP_SEGMENT control message for size into oob
// (which has room for it) and returns it.
func putSegmentSize(oob []byte, size int) []byte {
	oob = oob[:oobSize]
	clear(oob)
	h := (*unix.Cmsghdr)(cmsgHeader(oob))
	h.Level = unix.SOL_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], uint16(size))
	return oob
}

// groSize returns the datagram size a UDP_GRO control message in oob
// gives, or 0 if there is none (a single datagram).
func groSize(oob []byte) int {
	for len(oob) >= unix.SizeofCmsghdr {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return 0
		}
		if h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && len(data) >= 2 {
			return int(binary.NativeEndian.Uint16(data))
		}
		oob = rest
	}
	return 0
}
