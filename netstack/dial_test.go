package netstack

import (
	"errors"
	"net"
	"syscall"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// gonet reports a tcpip error as its text; the dial gives callers the errno.
func TestDialErrorsAreErrnos(t *testing.T) {
	for _, tc := range []struct {
		err  tcpip.Error
		want syscall.Errno
	}{
		{&tcpip.ErrConnectionRefused{}, syscall.ECONNREFUSED},
		{&tcpip.ErrHostUnreachable{}, syscall.EHOSTUNREACH},
		{&tcpip.ErrNetworkUnreachable{}, syscall.ENETUNREACH},
		{&tcpip.ErrTimeout{}, syscall.ETIMEDOUT},
		{&tcpip.ErrConnectionReset{}, syscall.ECONNRESET},
	} {
		// The shapes gonet returns: inside a net.OpError (TCP connect,
		// UDP connect), or bare.
		for _, err := range []error{
			&net.OpError{Op: "connect", Net: "tcp", Err: errors.New(tc.err.String())},
			errors.New(tc.err.String()),
		} {
			got := withErrno(err)
			if !errors.Is(got, tc.want) {
				t.Errorf("withErrno(%v) = %v, not %v", err, got, tc.want)
			}
			var oe *net.OpError
			if errors.As(err, &oe) && (!errors.As(got, &oe) || oe.Op != "connect") {
				t.Errorf("withErrno(%v) = %v: the net.OpError around it is lost", err, got)
			}
		}
	}
	if other := errors.New("boom"); withErrno(other) != other {
		t.Error("an error that is not a tcpip error's text was changed")
	}
	if withErrno(&net.OpError{Op: "connect", Net: "tcp", Err: errors.New("connection was refused")}).(*net.OpError).Timeout() {
		t.Error("a refusal reads as a timeout")
	}
}
