package tun

import (
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// linkEndpoint is the gVisor side of a Device. It is a separate type
// because stack.LinkEndpoint and wireguard-go's tun.Device both name
// methods MTU and Close with different meanings.
type linkEndpoint struct {
	d *Device
}

var _ stack.LinkEndpoint = (*linkEndpoint)(nil)

// LinkEndpoint returns the gVisor link endpoint for this device, to be
// given to stack.CreateNIC. Only one stack may use it.
func (d *Device) LinkEndpoint() stack.LinkEndpoint { return &d.link }

// WritePackets queues the stack's outbound packets for Read, blocking while
// the queue is full. It returns an error only when the device is closed
// before the first packet is queued.
func (l *linkEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	for _, pkt := range pkts.AsSlice() {
		if err := l.d.enqueue(pkt); err != nil {
			if n == 0 {
				return 0, err
			}
			break
		}
		n++
	}
	return n, nil
}

// MTU implements stack.LinkEndpoint.
func (l *linkEndpoint) MTU() uint32 { return uint32(l.d.mtu) }

// SetMTU implements stack.LinkEndpoint. The MTU is fixed at New: WireGuard
// reads it once, so a change here would make the two sides disagree.
func (l *linkEndpoint) SetMTU(uint32) {}

// MaxHeaderLength implements stack.LinkEndpoint: IP packets carry no link
// header.
func (l *linkEndpoint) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements stack.LinkEndpoint: there is no link address.
func (l *linkEndpoint) LinkAddress() tcpip.LinkAddress { return "" }

// SetLinkAddress implements stack.LinkEndpoint.
func (l *linkEndpoint) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.LinkEndpoint.
//
// With offload, the stack is told that inbound checksums were verified:
// Write's receive coalescing verifies the IP and TCP checksums of the TCP
// segments it joins, and has to say so this way because the joined packet
// carries the first segment's checksums. Other packets then go unverified,
// which admits nothing a peer could not send with a correct checksum:
// WireGuard has already authenticated every byte of them.
func (l *linkEndpoint) Capabilities() stack.LinkEndpointCapabilities {
	if l.d.noOffload {
		return stack.CapabilityNone
	}
	return stack.CapabilityRXChecksumOffload
}

// Attach implements stack.LinkEndpoint. A nil dispatcher detaches.
func (l *linkEndpoint) Attach(dispatcher stack.NetworkDispatcher) {
	l.d.mu.Lock()
	l.d.dispatcher = dispatcher
	l.d.mu.Unlock()
}

// IsAttached implements stack.LinkEndpoint.
func (l *linkEndpoint) IsAttached() bool {
	l.d.mu.RLock()
	defer l.d.mu.RUnlock()
	return l.d.dispatcher != nil
}

// Wait implements stack.LinkEndpoint. The endpoint owns no goroutines.
func (l *linkEndpoint) Wait() {}

// ARPHardwareType implements stack.LinkEndpoint.
func (l *linkEndpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements stack.LinkEndpoint: there is no link header.
func (l *linkEndpoint) AddHeader(*stack.PacketBuffer) {}

// ParseHeader implements stack.LinkEndpoint: there is no link header.
func (l *linkEndpoint) ParseHeader(*stack.PacketBuffer) bool { return true }

// Close implements stack.LinkEndpoint. It is called when the stack removes
// the NIC; it detaches but leaves the WireGuard side to Device.Close.
func (l *linkEndpoint) Close() { l.Attach(nil) }

// SetOnCloseAction implements stack.LinkEndpoint.
func (l *linkEndpoint) SetOnCloseAction(func()) {}
