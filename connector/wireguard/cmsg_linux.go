package wireguard

import "unsafe"

// cmsgHeader points at the control message header at the start of b.
func cmsgHeader(b []byte) unsafe.Pointer { return unsafe.Pointer(&b[0]) }
